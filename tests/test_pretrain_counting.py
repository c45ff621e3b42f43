"""Count-aware pretraining in the pretrain stage: the counting loss is on by default, the plain
baseline sees the same batches, and real (here: local) weights are fine-tuned only when asked."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from numclip.config import ModelConfig, load_params
from numclip.config.paths import plain_twin
from numclip.counting import CountingBatchSampler
from numclip.data import ImageRankDataset, ingest, read_manifest
from numclip.models.backbone import create_backbone, save_backbone
from numclip.stages.pretrain import CaptionedImages, _loader, pretrain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    params = load_params(None, [
        "data.num_ranks=4", "data.synthetic.num_images=48", "data.synthetic.image_size=16",
        f"data.synthetic.output_dir={out / 'synthetic'}", f"data.manifest={out / 'manifest.parquet'}",
        f"data.rejects={out / 'rejects.csv'}", f"data.incoming={out / 'none'}", "model.device=cpu",
        "pretrain.epochs=1", "pretrain.batch_size=8", f"pretrain.output={out / 'backbone.safetensors'}",
        f"pretrain.metrics={out / 'pretrain.json'}", f"plain_backbone.root={out / 'plain'}"])
    ingest(params.data)
    return params, out


def test_count_aware_by_default_and_plain_baseline(tiny):
    params, out = tiny
    assert params.count_loss_weight == 1.0 and params.pretrain.counting.weight is None  # from the task
    aware = pretrain(params, log=lambda s: None)
    plain = pretrain(plain_twin(params), log=lambda s: None)
    assert aware["source"].startswith("count-aware contrastive") and "count_loss" in aware["history"][0]
    assert plain["source"].startswith("contrastive (plain CLIP loss)")
    assert "count_loss" not in plain["history"][0]
    twin = plain_twin(params)
    assert Path(twin.pretrain.output).is_relative_to(out / "plain"), "the twin's files are under its root"
    assert json.loads(Path(twin.pretrain.metrics).read_text())["source"] == plain["source"]
    a, p = load_file(out / "backbone.safetensors"), load_file(twin.pretrain.output)
    assert any(not torch.equal(a[k], p[k]) for k in a), "the counting loss changed the weights"


def test_same_batches_with_and_without_the_counting_loss(tiny):
    """Only the loss differs between the two backbones: the sampler does not depend on the weight."""
    params, _ = tiny
    for fraction in (None, 0.5):
        batches = []
        for p in (params, plain_twin(params)):
            p = p.model_copy(deep=True)
            p.pretrain.counting.fraction = fraction
            data = CaptionedImages(ImageRankDataset(read_manifest(p.data.manifest), "train"),
                                   [f"a photo of {w} objects." for w in p.rank_words()], 0.5, p.pretrain.seed)
            loader = _loader(data, p)
            if fraction is not None:
                assert isinstance(loader.batch_sampler, CountingBatchSampler)
            torch.manual_seed(0)
            batches.append([captions for _, captions in loader])
        assert batches[0] == batches[1]


def test_real_weights_are_fine_tuned_only_when_asked(tiny, tmp_path):
    params, _ = tiny
    weights = tmp_path / "real.safetensors"
    save_backbone(create_backbone(ModelConfig(arch="numclip-tiny"), torch.device("cpu")), weights, "a stand-in")
    for finetune in (False, True):
        p = params.model_copy(deep=True)
        p.model.pretrained, p.pretrain.finetune_pretrained = str(weights), finetune
        p.pretrain.output = str(tmp_path / f"out_{finetune}.safetensors")
        result = pretrain(p, log=lambda s: None)
        before, after = load_file(weights), load_file(p.pretrain.output)
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert changed is finetune
        assert ("fine-tuning" in result["source"]) is finetune

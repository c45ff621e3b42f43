"""One module per dvc.yaml stage: reads params, runs the lower layers, writes the stage's paths.

A stage never imports another stage; what two stages share lives in a lower layer."""

"""The foundation every layer may use: errors, atomic files, digests, code fingerprints, seeds, progress bars."""

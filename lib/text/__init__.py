"""The text domain: NPoE and its baselines on SST-2, OffensEval, TREC and HateSpeech (chapter 3)."""

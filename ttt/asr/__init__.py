"""What a generate cell said, heard by a real offline recogniser, and the scores over words (no torch, no moshi: the ASR job and the reports import it)."""

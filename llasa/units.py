"""The units every module counts in: XCodec2's framing and the seed range (no imports: the bottom of the core)."""

SAMPLE_RATE = 16_000
"""XCodec2 works at 16 kHz only; every reference is resampled to it and every result is produced at it."""
SAMPLES_PER_CODE = 320
"""One XCodec2 code covers 320 samples (20 ms, 50 codes per second)."""
CODES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_CODE
MAX_SEED = 2**32 - 1

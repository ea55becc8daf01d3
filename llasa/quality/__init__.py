"""Guards against broken takes and the transcription-based checks on top of them (issue: never hand back a broken
take): `guards` (loops, run-ons, dead air), `transcript` (error rate, word alignment), `captions` (SRT, VTT, JSON)."""

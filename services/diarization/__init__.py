"""Speaker labels ("who spoke when"), experimental.

Pure Python over numpy; torch is imported only by `encoder` (the optional extra
`rayscribe[diarization]`), so importing this package never needs it. See `pipeline` for the
steps: Silero VAD, GE2E embeddings of 1.6 s windows, clustering, reference matching.
"""

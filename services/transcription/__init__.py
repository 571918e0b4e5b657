"""Speech to text: audio decoding, the Whisper engine, batching, output formats."""

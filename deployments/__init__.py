"""The Ray Serve edge: the app builder, the HTTP ingress and the Whisper deployment."""

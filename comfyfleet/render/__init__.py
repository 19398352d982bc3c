"""Start-up assets: the vast.ai on-start script and the Dockerfile that bakes a profile."""

"""A local RunPod serverless endpoint for tests (``server.LocalRunPod``) and its pytest fixtures."""

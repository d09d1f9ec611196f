"""SharpML's REST API: authenticated, rate-limited photo uploads that become SharpJob resources."""

API_VERSION = "v1"

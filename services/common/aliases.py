"""The registry's alias names: where a model name's versions stand (registry, trainer and inference agree on them)."""

PRODUCTION = "production"
CANDIDATE = "candidate"
CANARY = "canary"

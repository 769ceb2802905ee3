"""The steerable endpoint as a Ray Serve application.

  serve run serve.app:app config=configs/serve.yaml policy=RUN/checkpoints/npdpo/checkpoint_...
  serve deploy serve/serve_config.yaml          # on a running cluster (edit the paths first)

`app` builds the application from a ServeConfig YAML (`config=`) and key=value arguments
(`policy`, `reward`, `store`, limits, autoscaling: see platform/npalign/config.py, ServeConfig).
Docs of the HTTP API at http://127.0.0.1:8000/docs once it runs.
"""

from __future__ import annotations

from npalign.config import ServeConfig, load_config
from npalign.serving import build_app


def app(args: dict[str, str]):
    overrides = [f"{key}={value}" for key, value in args.items() if key != "config"]
    return build_app(load_config(args.get("config"), overrides, ServeConfig))

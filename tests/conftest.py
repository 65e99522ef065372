import os
import sys

# Must be set before torch is imported anywhere: with the other core busy, OpenMP's spin-waiting
# makes 2-thread torch 10-65x slower on these machines (docs/measurements.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = [p for p in ("fixtures_kafka", "fixtures_milvus")
                  if os.path.exists(os.path.join(os.path.dirname(__file__), p + ".py"))]

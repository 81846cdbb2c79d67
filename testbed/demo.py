"""``make demo`` for now: a local control plane with KubeRay's CRDs and the KubeRay simulator.

Starts etcd + kube-apiserver (built by testbed/build.sh), installs the CRDs, runs the
simulator, creates the namespaces the example repository deploys to, prints how to reach
it all, and runs until Ctrl-C; then stops every process by pid. The gitsync agent joins this
demo once ``gitsync run`` exists.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import yaml
from kubernetes import client

from testbed.controlplane import ControlPlane
from testbed.simulator import Delays, Simulator

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "repo-layout"


def example_namespaces() -> list[str]:
    config = yaml.safe_load((EXAMPLES / "gitsync.yaml").read_text())
    names = [env["namespace"] for env in config.get("environments", [])]
    previews = (config.get("previews") or {}).get("namespace")
    return names + ([previews] if previews else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".testbed" / "demo")
    parser.add_argument(
        "--exit-after-start", action="store_true", help="stop right after start-up (smoke test)"
    )
    args = parser.parse_args(argv)

    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh etcd and PKI every run
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with ControlPlane(workdir=args.workdir) as plane, plane.api_client() as api:
        core = client.CoreV1Api(api)
        for name in example_namespaces():
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        with plane.api_client() as sim_api, Simulator(sim_api, Delays(2.0, 3.0, 0.2)):
            assert plane.binaries is not None
            kubectl = f"{plane.binaries.kubectl} --kubeconfig {plane.kubeconfig}"
            env = EXAMPLES / "environments" / "staging"
            print(
                f"""
gitsync demo: a local Kubernetes control plane is running.

  API server     {plane.api_url} (kube-apiserver {plane.binaries.kube_version}, \
etcd {plane.binaries.etcd_version})
  kubeconfig     {plane.kubeconfig}
  KubeRay        CRDs from ray-operator {plane.binaries.kuberay_version}; a simulator writes \
RayService status
  namespaces     {", ".join(example_namespaces())}
  pids           {", ".join(f"{k}={v}" for k, v in plane.pids.items())}

Try it:
  export KUBECONFIG={plane.kubeconfig}
  {kubectl} apply --server-side --field-manager=gitsync -n ray-staging -f {env}
  {kubectl} get rayservices -n ray-staging -w
  {kubectl} get rayservice ranker -n ray-staging -o yaml

Ctrl-C stops everything.""",
                flush=True,
            )
            if not args.exit_after_start:
                while not stop.wait(1.0):
                    pass
    print("gitsync demo: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

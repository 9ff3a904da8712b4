"""Runs a study on GKE TPU node pools: one JobSet per run, submitted with kubectl once the runs it
depends on are done.

    python -m launch.gke --config C.py --topology v5p-32 --workdir gs://B/W --image IMAGE [--queue Q]
        [--service_account KSA] [--watch]
    python -m launch.gke status --config C.py --topology v5p-32 --workdir gs://B/W

Every host of the slice runs `python3 -m scaling.run --spec ... --distributed` in IMAGE (a container
with this project and jax[tpu]); GKE gives each pod TPU_WORKER_ID and TPU_WORKER_HOSTNAMES, from
which jax.distributed.initialize() finds the other hosts. A preempted slice restarts the JobSet (up
to --max_restarts times) and the run resumes from its checkpoint. A JobSet that failed for good, or
completed without result.json, is deleted and submitted again. Runs with result.json are skipped.
With --queue, JobSets carry Kueue's queue label (clusters made by xpk call theirs
'multislice-queue'); without it, nothing is detected and they go straight to the scheduler. With
--service_account, the pods run as that Kubernetes service account, which Workload Identity lets
write the workdir's bucket (granted to it, or to a Google service account bound to it); without it,
as the namespace's default. A JobSet's STUDY_LABEL is the study's key (its name and a hash of its
name and workdir), and its name starts with that key: studies of one name in two workdirs never
share a JobSet.
--dry_run prints the kubectl commands, each manifest as one line of JSON after its command.
"""

from __future__ import annotations

import json
import re
import sys
import time

from absl import app, flags

from launch import cli, plan
from scaling import grid

USAGE = (
  "python -m launch.gke [status] --config C.py --topology v5p-32 --workdir gs://B/W --image IMAGE "
  "[--queue Q] [--service_account KSA] [--watch] [--dry_run]"
)
STUDY_LABEL, RUN_LABEL, QUEUE_LABEL = "scaling/study", "scaling/run", "kueue.x-k8s.io/queue-name"
REPLICATED_JOB = "slice"
# Slice generation -> the cloud.google.com/gke-tpu-accelerator label of GKE's TPU nodes.
ACCELERATORS = {"v4": "tpu-v4-podslice", "v5p": "tpu-v5p-slice", "v5e": "tpu-v5-lite-podslice", "v6e": "tpu-v6e-slice"}
# The study's key is at most this long: it starts every JobSet name, and the run's label needs room too.
KEY_CHARS = 20
# A Kubernetes service account's name: a DNS subdomain (RFC 1123), at most 253 characters.
SERVICE_ACCOUNT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def run_name(prefix: str, run_id: str, limit: int) -> str:
  """`<prefix>-<run id>` as a DNS label of at most `limit` characters that keeps the id's hash."""
  label, digest = run_id.rsplit("-", 1)
  return f"{plan.dns_label(f'{prefix}-{label}', limit - len(digest) - 1)}-{digest}"


def jobset_name(p: plan.Plan, run: grid.Run) -> str:
  """The run's JobSet: the study's key and the run id, short enough for the pod names made from it."""
  # A pod is <jobset>-<replicated job>-<job index>-<pod index>-<5 random characters>, a DNS label.
  pod_suffix = f"-{REPLICATED_JOB}-0-{p.slice.hosts - 1}-abcde"
  # run_name shortens the run's label, never the key: the study's hash and the run's stay whole.
  return run_name(study_label(p), run.id, 63 - len(pod_suffix))


def study_label(p: plan.Plan) -> str:
  """The value of STUDY_LABEL on the study's JobSets: its key, which its workdir sets apart."""
  return plan.study_key(p, KEY_CHARS)


def manifest(
  p: plan.Plan, run: grid.Run, image: str, max_restarts: int, queue: str, service_account: str | None = None
) -> dict:
  """The run's JobSet: one indexed job with a pod on each host of a slice (as `service_account`, if given)."""
  labels = {STUDY_LABEL: study_label(p), RUN_LABEL: run_name("", run.id, 63)}
  if queue:
    labels[QUEUE_LABEL] = queue
  hosts = p.slice.hosts
  pod = {
    "restartPolicy": "Never",
    "nodeSelector": {
      "cloud.google.com/gke-tpu-accelerator": ACCELERATORS[p.slice.generation],
      "cloud.google.com/gke-tpu-topology": p.slice.topology,
    },
    "containers": [
      {
        "name": "run",
        "image": image,
        "command": plan.host_command(p.workdir, run),
        "resources": {"limits": {"google.com/tpu": p.slice.chips_per_host}},
      }
    ],
  }
  if service_account:
    pod["serviceAccountName"] = service_account  # Its Workload Identity lets the hosts write gs://.
  job = {
    "parallelism": hosts,
    "completions": hosts,
    "completionMode": "Indexed",
    "backoffLimit": 0,
    "template": {"spec": pod},
  }
  return {
    "apiVersion": "jobset.x-k8s.io/v1alpha2",
    "kind": "JobSet",
    "metadata": {"name": jobset_name(p, run), "labels": labels},
    "spec": {
      "failurePolicy": {"maxRestarts": max_restarts},  # A preempted slice restarts; the run resumes.
      "network": {"enableDNSHostnames": True},  # jax.distributed reaches the hosts by name.
      "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job}}],
    },
  }


def jobset_state(jobset: dict) -> str:
  """What a run's JobSet says while the run has no result.json: running, queued or failed."""
  status = jobset.get("status", {})
  conditions = {c["type"] for c in status.get("conditions", []) if c.get("status") == "True"}
  if conditions & {"Failed", "Completed"}:  # Completed without result.json: the run failed all the same.
    return "failed"
  if jobset.get("spec", {}).get("suspend") or "Suspended" in conditions:  # Held back by Kueue.
    return "queued"
  ready = sum(job.get("ready", 0) for job in status.get("replicatedJobsStatus", []))
  return "running" if ready else "queued"  # Pods that are not ready wait for their nodes.


def run_states(p: plan.Plan, dry_run: bool) -> list[plan.RunState]:
  """Every run's state from its result.json and its JobSet (a dry run sees none)."""
  out = plan.call(["kubectl", "get", "jobsets", "-l", f"{STUDY_LABEL}={study_label(p)}", "-o", "json"], dry_run)
  jobsets = {j["metadata"]["name"]: j for j in json.loads(out)["items"]} if out else {}
  engine = {}
  for r in p.runs:
    name = jobset_name(p, r)
    engine[r.id] = (jobset_state(jobsets[name]) if name in jobsets else "missing", name)
  return plan.run_states(p.runs, None if dry_run else p.workdir, engine)


def submit(p: plan.Plan, states: list[plan.RunState], retries: plan.Retries, dry_run: bool) -> int:
  """Submits every ready run, deleting the failed JobSet of one first; returns how many."""
  f = flags.FLAGS
  todo = plan.ready(states)
  for s in todo:
    if s.state == "failed":
      retries.spend(s.run.id, s.engine)
      # Foreground: the old JobSet's jobs are gone before new ones of the same names are made.
      plan.call(["kubectl", "delete", "jobset", s.engine, "--cascade=foreground", "--ignore-not-found"], dry_run)
    body = json.dumps(manifest(p, s.run, f.image, f.max_restarts, f.queue, f.service_account))
    plan.call(["kubectl", "create", "-f", "-"], dry_run, stdin=body)
    if not dry_run:
      print(f"submitted {s.run.id} as JobSet {s.engine}" + (" (again: it failed)" if s.state == "failed" else ""))
  return len(todo)


def launch(p: plan.Plan) -> None:
  """Writes the plan and submits what is ready; with --watch, again and again until every run is done."""
  f = flags.FLAGS
  if not f.dry_run:
    plan.write_plan(p.study, p.runs, p.workdir)
  retries, last = plan.Retries(f.retries), ""
  while True:
    states = run_states(p, f.dry_run)
    if all(s.state == "done" for s in states):
      print(plan.format_status(states))
      return
    submitted = submit(p, states, retries, f.dry_run)
    if f.dry_run:
      return
    line = f"{plan.counts(states)}; submitted {submitted}"
    if line != last:
      print(line, flush=True)
    if not f.watch:
      return
    last = line
    time.sleep(f.poll_seconds)


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  status = plan.is_status(argv, USAGE)
  if not status and not f.image:
    sys.exit(
      "invalid launch: --image is missing; allowed: a container image with this project and jax[tpu] "
      "installed, such as us-docker.pkg.dev/PROJECT/REPO/scaling:TAG"
    )
  account = f.service_account
  if account is not None and (len(account) > 253 or not SERVICE_ACCOUNT.fullmatch(account)):
    sys.exit(
      f"invalid launch: --service_account={account!r} is not a Kubernetes service account name; "
      "allowed: at most 253 characters of a-z, 0-9, '-' and '.', each '.'-separated part starting and "
      "ending with a letter or digit, such as scaling-writer"
    )
  with cli.resumable("launch.gke"):
    p = plan.from_flags(USAGE, probe=not (status or f.dry_run))
    try:
      if status:
        print(plan.format_status(run_states(p, f.dry_run)))
        return
      print(plan.summary(p, f.dry_run), flush=True)
      launch(p)
    except plan.LaunchError as e:
      sys.exit(str(e))


if __name__ == "__main__":
  plan.define_flags()
  flags.DEFINE_string("image", None, "Container image with this project and jax[tpu] installed.")
  flags.DEFINE_string("queue", None, "Kueue LocalQueue to submit to (label kueue.x-k8s.io/queue-name); default: none.")
  flags.DEFINE_string(
    "service_account",
    None,
    "Kubernetes service account that the pods run as, which Workload "
    "Identity lets write the workdir's bucket; default: none (the namespace's default).",
  )
  flags.DEFINE_integer(
    "max_restarts", 10, "JobSet restarts after a preemption or failure before it fails.", lower_bound=0
  )
  app.run(main, flags_parser=cli.flags_parser(USAGE))

#!/usr/bin/env python3
"""A stand-in for `sbatch`, used by the cluster test with snakemake-executor-plugin-cluster-generic.

Records the resources Snakemake asked for, starts the job script as a separate background
process in its own session (as a scheduler would on a node), and prints a job id.
"""

import argparse
import json
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--record", required=True, help="JSON-lines file of submissions")
parser.add_argument("--rule", required=True)
parser.add_argument("--threads", type=int, required=True)
parser.add_argument("--mem-mb", type=int, required=True)
parser.add_argument("--runtime", type=int, required=True)
parser.add_argument("--gpu", type=int, required=True)
parser.add_argument("jobscript")
args = parser.parse_args()

log = open(f"{args.jobscript}.out", "w")
job = subprocess.Popen(["bash", args.jobscript], stdout=log, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, start_new_session=True)
with open(args.record, "a") as record:
    record.write(json.dumps({"job_id": job.pid, "rule": args.rule, "threads": args.threads,
                             "mem_mb": args.mem_mb, "runtime": args.runtime, "gpu": args.gpu,
                             "jobscript": args.jobscript}) + "\n")
print(job.pid)
sys.stdout.flush()

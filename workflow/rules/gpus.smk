# GPU slots on a workstation (README: Clusters and GPUs). Run locally on a machine with GPUs, each
# job that trains or predicts on a GPU asks Snakemake for its GPUs (resource `gpu`: train.devices
# for a training, 1 for a prediction), Snakemake runs no more GPUs' worth of jobs at once than the
# machine has (the global `gpu_seats` limit: 12 seats a GPU), and the job's command,
# `imageclf gpus {resources.gpu} --share {resources.gpu_share} -- ...`, takes that many GPUs of its
# own with a lock the operating system releases when the job ends (imageclf/core/gpu_slots.py).
# On a cluster (another executor, or inside a SLURM job) the scheduler's assignment and the
# config's `gpu` stay as they were.
#
# Which executor runs the jobs is not known while the Snakefile is read (workflow.local_exec is
# True then, whatever --executor says), only when the jobs are made: the resources below decide
# then (on_workstation), and the limit and the exported list set here are inert on a cluster.

import os

from imageclf.core.config import variant_sections
from imageclf.core.gpu_slots import IDS_ENV, SEATS, machine_gpus, under_scheduler


def local_gpu_ids():
    """The GPU ids this Snakemake hands out to its jobs: resources.gpu_ids, else those this
    machine shows; None where a scheduler assigns GPUs (a cluster executor, a SLURM job, a
    cluster job's own Snakemake)."""
    if not workflow.is_main_process or under_scheduler():
        return None
    configured = CFG["resources"].get("gpu_ids")
    if configured is not None:
        return [str(gpu) for gpu in configured]
    return machine_gpus()


LOCAL_GPUS = local_gpu_ids()
if LOCAL_GPUS is not None:
    # the jobs' `imageclf gpus` takes its GPUs from these (empty: none, the jobs run as they are)
    os.environ[IDS_ENV] = ",".join(LOCAL_GPUS)
    # Snakemake counts twelfths of a GPU (seats: a job with gpu_share S takes 12 / S of them), so
    # that it never starts more GPU jobs than fit, and the CPU-only jobs run beside them
    if LOCAL_GPUS and "gpu_seats" not in workflow.global_resources:
        workflow.global_resources["gpu_seats"] = len(LOCAL_GPUS) * SEATS


def on_workstation():
    """Whether this Snakemake runs its jobs on this machine, asked when a job is made (the
    executor is known by then). On a cluster the exported list goes: no job gets it."""
    if workflow.local_exec:
        return True
    os.environ.pop(IDS_ENV, None)
    return False


def gpu_resource(stage):
    """A rule's `gpu` resource: resources.<stage>.gpu from config; on a workstation with GPUs, at
    least what the job uses there (train.devices for train, one GPU for predict) unless the run
    trains on the CPU (train.device: cpu). A resource, never a param: it changes no result.
    """
    configured = CFG["resources"][stage].get("gpu", 0)
    if not LOCAL_GPUS:
        return configured

    def gpus(wildcards):
        train = variant_sections(CFG, wildcards.variant)["train"]
        if train["device"] == "cpu" or not on_workstation():
            return configured
        return max(configured, train["devices"] if stage == "train" else 1)

    return gpus


def gpu_share(stage):
    """How many of a stage's jobs may share one GPU on a workstation (resources.<stage>.gpu_share,
    default 1); 1 where a scheduler assigns GPUs."""
    share = CFG["resources"][stage].get("gpu_share", 1)
    if not LOCAL_GPUS:
        return 1
    return lambda wildcards: share if on_workstation() else 1


def gpu_seats(stage):
    """A rule's `gpu_seats` resource on a workstation: its GPUs in twelfths (imageclf/core/gpu_slots.py);
    0 where a scheduler assigns GPUs."""
    if not LOCAL_GPUS:
        return 0
    gpus, share = gpu_resource(stage), gpu_share(stage)
    return lambda wildcards: (
        gpus(wildcards) * SEATS // share(wildcards) if on_workstation() else 0
    )

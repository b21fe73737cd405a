#!/bin/bash
# A one-node SLURM cluster on this machine (slurmctld + slurmd + slurmdbd on MariaDB, munge), with
# partitions "cpu" and "gpu" (the gpu partition's node advertises one gpu GRES, backed by no device),
# and an account "my_lab", so that the project's SLURM profile can run unchanged. Run as root
# (.ci/run does); tests/test_slurm.py then runs the workflow on it.
# Needs: apt-get install -y slurm-wlm slurmdbd munge mariadb-server
set -euo pipefail
H=$(hostname -s)
CPUS=$(nproc); MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
# MariaDB for slurmdbd (sacct needs accounting)
if ! pgrep -x mariadbd >/dev/null; then
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  (mysqld_safe >/var/log/slurm/mysqld.log 2>&1 &)
  for i in $(seq 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
cat >/etc/slurm/gres.conf <<CONF
NodeName=$H Name=gpu File=/dev/null
CONF
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$H
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# each job's comment (rule_<rule>_wildcards_...) in sacct: the tests find each rule's jobs by it
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
AccountingStorageEnforce=associations
MpiDefault=none
ReturnToService=2
# Finished jobs stay in squeue's view for 5 minutes: the profile's status command (squeue) needs that
MinJobAge=300
NodeName=$H CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=gpu Nodes=$H MaxTime=INFINITE State=UP
CONF
pgrep -x slurmdbd >/dev/null || slurmdbd
for i in $(seq 20); do sacctmgr -i show cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster local >/dev/null 2>&1 || true
sacctmgr -i add account my_lab Cluster=local >/dev/null 2>&1 || true
sacctmgr -i add user root Account=my_lab >/dev/null 2>&1 || true
if pgrep -x slurmctld >/dev/null; then scontrol reconfigure; else slurmctld; fi  # a running one rereads slurm.conf
pgrep -x slurmd >/dev/null || slurmd
for i in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix" && break; sleep 1; done
scontrol update nodename=$H state=resume >/dev/null 2>&1 || true
sinfo

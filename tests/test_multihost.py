"""Several hosts on this one machine (tests/multihost/hosts.sh): real 2-node SLURM jobs, torchrun and DeepSpeed's own
launcher across hosts, the same result as one host, resume on the same hosts, a host whose ranks die, and a --out
that only one host sees.

Each host is a network + UTS + mount namespace with its own name (node1, node2), address (192.168.213.N on a bridge
of its own) and node-local directory; the first host's /etc/hosts maps its own name to 127.0.1.1, as Debian's
installer writes it: the trap that makes gloo tell the other hosts a loopback address (ds_distil.core.net).
Skips where namespaces cannot be made (not root, no `ip`) or SLURM is not installed, unless DS_DISTIL_REQUIRE_SLURM=1
(`.ci/run`), which makes that a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_slurm import job_field, requeue_onto, wait_done, wait_for

from ds_distil.runtime.checkpoint import latest_tag, verify

HOSTS_SH = ROOT / "tests" / "multihost" / "hosts.sh"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multihost")]  # one test bed, on one worker


def missing_requirement() -> str | None:
    """Why this machine cannot hold the test bed, or None."""
    if os.geteuid() != 0:
        return "not root: network, UTS and mount namespaces and a bridge need root"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("nsenter", "util-linux"), ("slurmctld", "slurmctld"),
                          ("slurmd", "slurmd"), ("sbatch", "slurm-client"), ("munged", "munge")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y --no-install-recommends {package})"
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"namespaces cannot be made here: {probe.stderr.strip()[:200]}"
    bridge = f"dsdprobe{os.getpid() % 10**6}"
    probe = subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"a bridge cannot be made here: {probe.stderr.strip()[:200]}"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    return None


def require_test_bed() -> None:
    reason = missing_requirement()
    if reason is not None:
        if os.environ.get("DS_DISTIL_REQUIRE_SLURM") == "1":
            pytest.fail(reason + "; DS_DISTIL_REQUIRE_SLURM=1 makes this a failure")
        pytest.skip(reason)


class Bed:
    """A running test bed: commands on its hosts, its SLURM, the processes in each host's network namespace."""

    def __init__(self, directory: Path, n: int):
        self.dir = directory
        self.hosts = [f"node{i}" for i in range(1, n + 1)]
        # 6 CPUs a node to SLURM: room for a 4-rank job on one host beside a 2 x 2 one (the machine's cores are shared)
        proc = subprocess.run(["bash", str(HOSTS_SH), "start", str(directory), str(n)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOSTS_CPUS": "6"})
        assert proc.returncode == 0, proc.stderr
        self.env = {**os.environ, "SLURM_CONF": str(directory / "slurm.conf"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                    "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}

    def stop(self) -> None:
        subprocess.run(["bash", str(HOSTS_SH), "stop", str(self.dir)], timeout=120)

    def argv(self, host: str, *cmd) -> list[str]:
        return ["bash", str(HOSTS_SH), "exec", str(self.dir), host, *map(str, cmd)]

    def run(self, host: str, *cmd, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(host, *cmd), capture_output=True, text=True, cwd=ROOT, env={**self.env, **(env or {})},
                              timeout=timeout)

    def popen(self, host: str, *cmd, log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "w") as f:
            return subprocess.Popen(self.argv(host, *cmd), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**self.env, **(env or {})})

    def sbatch(self, script: str, log: Path, *options: str, **variables) -> str:
        out = self.run("node1", "sbatch", "--parsable", f"--output={log}", *options, ROOT / "slurm" / script, env=variables)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0]

    @property
    def client(self) -> dict:
        """The environment in which `scontrol`, `scancel`, ... (test_slurm's job_field, wait_done) ask the first host."""
        return {**self.env, "PATH": f"{self.dir / 'bin'}:{os.environ['PATH']}"}

    def holder(self, host: str) -> int:
        return int((self.dir / "run" / f"host-{host}.pid").read_text())

    def processes(self, host: str) -> dict[int, str]:
        """pid -> command line of every process in `host`'s network namespace."""
        ns = os.readlink(f"/proc/{self.holder(host)}/ns/net")
        out = {}
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and os.readlink(p / "ns" / "net") == ns:
                    out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
        return out

    def eth0_bytes(self, host: str) -> tuple[int, int]:
        """(received, sent) bytes of `host`'s link to the bridge."""
        proc = self.run(host, "ip", "-j", "-s", "link", "show", "dev", "eth0")
        stats = json.loads(proc.stdout)[0]["stats64"]
        return stats["rx"]["bytes"], stats["tx"]["bytes"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_test_bed()
    b = Bed(tmp_path_factory.mktemp("hosts"), 2)
    try:
        # node1's own name resolves to a loopback address on node1 (Debian's `127.0.1.1 <hostname>`), its real address
        # everywhere else: written in place, the file is bind-mounted as node1's /etc/hosts
        hosts = b.dir / "nodes" / "node1" / "hosts"
        hosts.write_text(hosts.read_text().replace("192.168.213.1 node1", "127.0.1.1 node1"))
        yield b
    finally:
        b.stop()


# ------------------------------------------------------------------------------------------------------ the test bed


def test_each_host_has_its_name_address_and_local_disk_and_stop_leaves_nothing(tmp_path):
    """3 hosts: srun places one task on each, under its own name and address; DIR/local differs per host, DIR/shared
    does not; the machine's /etc/hosts is not touched; stop removes processes, namespaces, links and files."""
    require_test_bed()
    etc_hosts = Path("/etc/hosts").read_bytes()
    b = Bed(tmp_path / "bed", 3)
    try:
        holders = [b.holder(h) for h in b.hosts]
        bridge = re.search(r"BRIDGE=(\S+)", (b.dir / "hosts.env").read_text())[1]
        script = (f'echo "$SLURM_PROCID $(hostname) $(hostname -i)"; echo $(hostname) > {b.dir}/local/me; '
                  f'touch {b.dir}/shared/$(hostname)')
        proc = b.run("node1", "srun", "--nodes=3", "--ntasks-per-node=1", "bash", "-c", script)
        assert proc.returncode == 0, proc.stderr
        lines = sorted(proc.stdout.split("\n"))
        assert [l for l in lines if l[:1].isdigit()] == [f"{i} node{i + 1} 192.168.213.{i + 1}" for i in range(3)], proc.stdout
        for h in b.hosts:
            assert (b.dir / "nodes" / h / "local" / "me").read_text() == f"{h}\n" and (b.dir / "shared" / h).exists()
        assert not (b.dir / "local" / "me").exists()  # the machine's own view of DIR/local: untouched
        assert b.run("node2", "getent", "hosts", "node3").stdout.split() == ["192.168.213.3", "node3"]
    finally:
        b.stop()
    assert Path("/etc/hosts").read_bytes() == etc_hosts
    assert not any(Path(f"/proc/{p}").exists() for p in holders)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert bridge not in links
    assert sorted(p.name for p in b.dir.iterdir()) == ["log", "shared"]  # the daemons' logs, and what the jobs wrote


# -------------------------------------------------------------------------------------------------------- helpers


def distill_overrides(shards: Path, steps: int, **extra) -> list[str]:
    values = {"data.shards": shards, "data.verify_checksums": "false", "data.num_workers": 0, "train.micro_batch_size": 4,
              "train.max_steps": steps, "checkpoint.every_steps": 0, "log.every_steps": 1, "log.eval_max_samples": 32, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def metric_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path) -> list[float]:
    return [r["loss/total"] for r in metric_lines(run_dir) if "loss/total" in r]


RANK_LINE = re.compile(r"rank (\d+) of (\d+) \(local rank (\d+)\) on host (\S+) \(([0-9a-f.:]+)\); gloo over (\S+):")


def placement(text: str) -> dict[int, tuple[str, str, str]]:
    """rank -> (host, address, gloo's interface), from each rank's first line (ds_distil.runtime.engine)."""
    return {int(m[1]): (m[4], m[5], m[6]) for m in RANK_LINE.finditer(text)}


TWO_BY_TWO = {0: ("node1", "192.168.213.1", "eth0"), 1: ("node1", "192.168.213.1", "eth0"),
              2: ("node2", "192.168.213.2", "eth0"), 3: ("node2", "192.168.213.2", "eth0")}


# ---------------------------------------------------------------------------------------------- across the hosts


def test_gloo_alone_fails_across_hosts_where_a_name_is_loopback_ours_does_not_and_a_local_out_is_refused(bed, small_shards, tmp_path):
    """node1's name is 127.0.1.1 on node1. Left to itself gloo binds there and tells node2 that address (connection
    refused); ds-distil's ranks take the interface that reaches MASTER_ADDR, started by torchrun's agents or DeepSpeed's
    launcher on each host as well as by srun. A --out on node1's local disk is refused on every rank, naming node2,
    before training."""
    local = bed.dir / "local"  # the same path on every host, a different directory on each
    jobs = {"distill": bed.sbatch("distill.sbatch", tmp_path / "distill.log", "--nodes=2", "--ntasks-per-node=1", CONFIG=SMOKE,
                                  RUN_DIR=str(local / "run"), EXTRA=" ".join(distill_overrides(small_shards, 4))),
            "finetune": bed.sbatch("finetune.sbatch", tmp_path / "finetune.log", "--nodes=2", "--ntasks-per-node=1", MODEL="micro",
                                   TASKS="hatespeech", RUN_DIR=str(local / "ft"))}
    plain = ("import datetime, os, torch.distributed as dist\n"
             "os.environ.update(RANK=os.environ['SLURM_PROCID'], WORLD_SIZE=os.environ['SLURM_NTASKS'])\n"
             "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))\n")
    proc = bed.run("node1", "srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "env", "MASTER_ADDR=node1",
                   "MASTER_PORT=29500", sys.executable, "-c", plain)
    assert proc.returncode != 0 and "Connection refused, remote=[127.0.1.1]" in proc.stdout + proc.stderr, proc.stderr[-3000:]

    # torchrun's agent on each host (c10d rendezvous on node1), 2 ranks each; DeepSpeed's launcher on each host with
    # the hostfile (--no_ssh: what its pdsh mode would start there over ssh), 1 rank each
    claim = ROOT / "tests" / "helpers" / "claim_ranks.py"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    launches = {"torchrun": ([Path(sys.executable).parent / "torchrun", "--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
                              "--rdzv_endpoint=node1:29501", "--rdzv_id=claim", claim, tmp_path / "torchrun"], TWO_BY_TWO),
                "deepspeed": ([Path(sys.executable).parent / "deepspeed", "--hostfile", hostfile, "--no_ssh", "--node_rank={i}",
                               "--master_addr=node1", "--master_port=29502", "--no_local_rank", claim, tmp_path / "deepspeed"],
                              {0: TWO_BY_TWO[0], 1: TWO_BY_TWO[2]})}
    agents = {name: [bed.popen(h, *[str(a).format(i=i) for a in cmd], log=tmp_path / f"{name}-{h}.log") for i, h in enumerate(bed.hosts)]
              for name, (cmd, _) in launches.items()}
    for name, (_, where) in launches.items():
        codes = [p.wait(timeout=300) for p in agents[name]]
        logs = "".join((tmp_path / f"{name}-{h}.log").read_text() for h in bed.hosts)
        assert codes == [0, 0], logs[-3000:]
        assert sorted(re.findall(r"^rank \d+ writes .*$", logs, re.M)) == [f"rank {r} writes {tmp_path / name}" for r in where]
        assert placement(logs) == where, logs[-3000:]
        assert "MASTER_ADDR node1 is 127.0.1.1 here" in logs

    for command, job in jobs.items():
        assert wait_done(bed.client, job, timeout=300) == "FAILED"
        text = (tmp_path / f"{command}.log").read_text()
        refusals = [line for line in text.splitlines() if f"ds-distil {command}: error:" in line]
        assert len(refusals) == 2 and len(set(refusals)) == 1, text[-3000:]  # the same one line from each rank
        out = local / ("run" if command == "distill" else "ft/hatespeech/seed42")
        assert f"--out {out} is not visible from host node2 (rank 1), but rank 0 made it on host node1" in refusals[0]
        assert job_field(bed.client, job, "Restarts") == "0"
    assert "step 1/" not in (tmp_path / "distill.log").read_text()
    assert not (bed.dir / "nodes" / "node1" / "local" / "run" / "checkpoints").exists()
    assert not list((bed.dir / "nodes" / "node1" / "local" / "ft").rglob("*.ds-distil-new-*"))  # the claim made nothing

def test_two_hosts_train_as_one_host_and_resume_bit_identically_after_a_requeue(bed, small_shards, tmp_path):
    """The same 4 ranks and global batches (4 x 4 samples): sbatch on one host (1 x 4) and on two hosts (2 x 2),
    the latter signalled with USR1, checkpointed, requeued and resumed on the same hosts. The losses agree (to the
    tolerance of 2 ranks against 1 elsewhere); in fact 4 gloo ranks add the same numbers in the same order wherever they
    run, so the requeued run must equal the uninterrupted one bit for bit. The gradients crossed the bridge: node2's
    link carried at least one copy of the student each way per step."""
    from safetensors.torch import load_file

    steps = 8
    rx0, tx0 = bed.eth0_bytes("node2")
    run_dir, log = tmp_path / "two", tmp_path / "two.log"
    job = bed.sbatch("distill.sbatch", log, "--nodes=2", "--ntasks-per-node=2", CONFIG=SMOKE, RUN_DIR=str(run_dir),
                     EXTRA=" ".join(distill_overrides(small_shards, steps)))
    one = bed.sbatch("distill.sbatch", tmp_path / "one.log", "--nodes=1", "--ntasks=4", CONFIG=SMOKE, RUN_DIR=str(tmp_path / "one"),
                     EXTRA=" ".join(distill_overrides(small_shards, steps)))
    wait_for(lambda: len(losses(run_dir)) >= 3, bed.client, job, log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=bed.client)
    assert wait_done(bed.client, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    rx1, tx1 = bed.eth0_bytes("node2")
    assert wait_done(bed.client, one, timeout=600) == "COMPLETED", (tmp_path / "one.log").read_text()[-3000:]
    text = log.read_text()
    assert job_field(bed.client, job, "Restarts") == "1" and "requeueing" in text, text[-3000:]
    stopped_at = int(text.split("stop requested by signal: checkpoint step")[1][:8])
    assert 3 <= stopped_at < steps and f"resumed from step {stopped_at}" in text

    # where the ranks ran: each rank's own line, before and after the requeue
    assert placement(text) == TWO_BY_TWO and text.count("rank 3 of 4 (local rank 1) on host node2") == 2, text[-3000:]
    assert len({h for h, _, _ in placement((tmp_path / "one.log").read_text()).values()}) == 1

    two, single = losses(run_dir), losses(tmp_path / "one")
    assert len(single) == steps and two == pytest.approx(single, rel=1e-5)
    assert two == single  # bit for bit: the steps before the stop and those after the resume
    a, b = load_file(tmp_path / "one" / "student" / "model.safetensors"), load_file(run_dir / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ZeRO-2 over 2 hosts: every step node2's ranks sent node1's half of their gradients and received their half of
    # the updated parameters: at least one fp32 copy of the student each way per step, over node2's only link
    params = sum(t.numel() for t in a.values())
    assert tx1 - tx0 >= steps * params * 4 and rx1 - rx0 >= steps * params * 4, (tx1 - tx0, rx1 - rx0, params)


def test_a_two_host_job_requeued_onto_one_host_finishes_there_with_its_global_batch(bed, small_shards, tmp_path):
    """Issue 39: a job on 2 hosts (2 tasks, at most one per node: --nodes=1-2 alone lets SLURM start it on one) is
    preempted and requeued onto 1 node, as a cluster does when only one is free: the requeued start runs 1 rank on one
    host, resumes the checkpoint the 2 hosts wrote (converted for 1 rank, the global batch kept: accumulation 1 -> 2)
    and finishes, every step logged once."""
    steps = 8
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    job = bed.sbatch("distill.sbatch", log, "--nodes=1-2", "--ntasks=2", "--ntasks-per-node=1", CONFIG=SMOKE, RUN_DIR=str(run_dir),
                     EXTRA=" ".join(distill_overrides(small_shards, steps)))
    wait_for(lambda: len(losses(run_dir)) >= 3, bed.client, job, log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=bed.client)
    requeue_onto(bed.client, job, NumTasks=1, NumCPUs=1, NumNodes="1-1")
    assert wait_done(bed.client, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    first, second = text.split("(restart 1)", 1)
    assert placement(first) == {0: TWO_BY_TWO[0], 1: TWO_BY_TWO[2]} and "nodes node1 node2 | ranks 2 on cpu" in first, first[-3000:]
    assert re.search(r"\(restart 1\): nodes node\d \| ranks 1 on cpu", text) and "rank 1 of" not in second, second[-3000:]
    stopped_at = int(first.split("stop requested by signal: checkpoint step")[1][:8])
    assert 3 <= stopped_at < steps and f"resumed from step {stopped_at}" in second
    assert "resumed on 1 rank(s) (was 2): accumulation 1 -> 2, same global batch 8" in second, second[-3000:]
    assert "done: student in" in second and (run_dir / "student" / "model.safetensors").is_file()
    assert [r["step"] for r in metric_lines(run_dir) if "loss/total" in r] == list(range(1, steps + 1))


def test_a_host_whose_ranks_die_ends_the_job_on_every_host_and_the_last_checkpoint_stays_whole(bed, small_shards, tmp_path):
    """kill -9 of node2's ranks (every process of the job there but SLURM's own step daemon) while the run trains: the
    rank on node1 sees its peer's connection close and exits, srun ends the step, the job fails (no requeue: not a
    preemption), nothing of the job runs on either host, and the newest complete checkpoint verifies. (One rank per
    host: what a second one per host would add is covered by the 2 x 2 runs above.)"""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    job = bed.sbatch("distill.sbatch", log, "--nodes=2", "--ntasks-per-node=1", CONFIG=SMOKE, RUN_DIR=str(run_dir),
                     EXTRA=" ".join(distill_overrides(small_shards, 200, **{"checkpoint.every_steps": 2})))
    wait_for(lambda: latest_tag(run_dir / "checkpoints") is not None and len(losses(run_dir)) >= 3, bed.client, job, log)
    daemons = {bed.holder("node2"), int((bed.dir / "run" / "slurmd-node2.pid").read_text())}
    ranks = {p: cmd for p, cmd in bed.processes("node2").items() if p not in daemons and not cmd.startswith("slurmstepd")}
    assert sum("ds_distil distill" in cmd for cmd in ranks.values()) == 1, ranks
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    assert wait_done(bed.client, job, timeout=180) == "FAILED", log.read_text()[-3000:]
    text = log.read_text()
    assert job_field(bed.client, job, "Restarts") == "0" and "requeueing" not in text
    assert "node2: task 1: Killed" in text, text[-3000:]
    # node1's rank: gloo's error at its next collective, or srun's kill if that came first
    assert re.search(r"Connection (closed|reset) by peer \[192\.168\.213\.2\]|node1: task 0: (Terminated|Killed)", text), text[-3000:]
    assert "ranks exited with status 0" not in text
    for h in bed.hosts:
        assert not [cmd for cmd in bed.processes(h).values() if "ds_distil" in cmd], h
    tag = latest_tag(run_dir / "checkpoints")
    assert verify(run_dir / "checkpoints" / tag, world_size=2) is None
    assert len(list((run_dir / "checkpoints" / tag).glob("*optim_states.pt"))) == 2


STUDY = """
name: multihost-tiny
estimates: {{"*": 0.1}}
ranks: 2
prepare: {{corpus: {corpus}, tokenizer: {tokenizer}, seq_len: 64, settings: {{max_docs: 300, workers: 1, samples_per_shard: 100}}}}
teacher:
  source: pretrain
  settings:
    student: {{preset: micro}}
    train: {{micro_batch_size: 4, max_steps: 2, lr: 0.001}}
    data: {{num_workers: 0}}
    deepspeed.config: ds_configs/zero2-fp32.json
cache: {{enabled: true, k: 4, mask_copies: 1}}
distill:
  settings:
    train: {{micro_batch_size: 4, max_steps: 2}}
    data: {{num_workers: 0}}
    deepspeed.config: ds_configs/zero2-fp32.json
students:
  s: {{label: Student, settings: {{student: {{preset: micro}}}}}}
baselines: {{from_scratch: false}}
finetune:
  seeds: [1]
  settings: {{train.max_steps: 2, train.micro_batch_size: 8, eval_batch_size: 64, task.max_length: 32}}
  tasks: {{hatespeech: {{data_dir: {hs}}}}}
"""


def test_a_study_job_runs_each_rank_stage_on_both_hosts(bed, tmp_path, data_dir, corpus, mbert_tokenizer_dir):
    """`ds-distil experiment --launcher srun` in a 2-node allocation (experiment.sbatch): the teacher's pretraining,
    the teacher cache, the distillation from it and both finetunings run as srun steps with one rank on each host."""
    hs = tmp_path / "hs"
    hs.mkdir()
    for split in ("train", "valid", "test"):
        lines = (data_dir / "hatespeech" / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (hs / f"{split}.csv").write_text("".join(lines[:81]), encoding="utf-8")
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(corpus=corpus, tokenizer=mbert_tokenizer_dir, hs=hs))
    run_dir, log = tmp_path / "study", tmp_path / "study.log"
    job = bed.sbatch("experiment.sbatch", log, "--nodes=2", "--ntasks-per-node=1", STUDY=str(study), RUN_DIR=str(run_dir))
    assert wait_done(bed.client, job, timeout=900) == "COMPLETED", log.read_text()[-3000:]
    stages = {str(p.relative_to(run_dir / "logs")): p.read_text() for p in (run_dir / "logs").rglob("*.log")}
    ranked = {name: placement(text) for name, text in stages.items() if "rank 1 of 2" in text}
    assert len(ranked) == 5, sorted(stages)  # teacher, cache, student, and the finetuning of each
    for name, where in ranked.items():
        assert where == {0: ("node1", "192.168.213.1", "eth0"), 1: ("node2", "192.168.213.2", "eth0")}, (name, where)
    assert "Table 2" in (run_dir / "report" / "tables.md").read_text()
    res = json.loads((run_dir / "finetune" / "s" / "hatespeech" / "seed1" / "results.json").read_text())
    assert res["world_size"] == 2

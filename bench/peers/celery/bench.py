"""Celery 5.x (Redis broker) on the workloads of `ballast bench`.

Submit one by one (`.delay()`, each call returning before the next), submit in batches of
1,000 (kombu's `Producer.batch()`, and for comparison a `group` of 1,000), a drain of N
pre-published no-op tasks by one `celery worker` process under several pool settings, and
pickup latency with a producer at a fixed rate. For each workload it reports Redis CPU and
Redis commands per task from INFO before and after.

It starts its own redis-server on a unix socket in a temporary folder (no TCP port), flushes
it between workloads and removes the folder at the end, so it never touches a Redis you run.

    python bench.py [--n 50000] [--json]

The same file is the Celery app the worker subprocess loads (`celery -A bench worker`): the
module level defines the app and the tasks, the benchmark runs only under `__main__`.
"""

import argparse
import atexit
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from celery import Celery, group, signals

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE = 'celery'  # Celery's default queue: a Redis list of that name

app = Celery('bench', broker=os.environ.get('CELERY_BENCH_BROKER', 'redis+socket:///unset'))
app.conf.update(
    # No result backend: a no-op's return value is not stored anywhere (Celery's usual
    # setting for fire-and-forget tasks; see README for what this means for the comparison).
    task_ignore_result=True,
    task_serializer='json',
    accept_content=['json'],
    broker_connection_retry_on_startup=True,
)
if os.environ.get('CELERY_BENCH_PREFETCH'):
    app.conf.worker_prefetch_multiplier = int(os.environ['CELERY_BENCH_PREFETCH'])

# --- worker side: what each process ran, written to a file of its own when it exits -------

_lock = threading.Lock()  # the threads pool runs tasks concurrently in one process
_stats = {'count': 0, 'first': None, 'last': None, 'lat_us': []}
# Tasks finished by the whole worker. Created at import, i.e. in the worker's main process
# before the prefork pool forks, so every child increments the same shared counter. The
# task that brings it to CELERY_BENCH_EXPECT writes the `done` file the benchmark waits
# for: completion is seen from the worker, not guessed from Redis (a message popped by
# BRPOP but not yet recorded as unacked is in neither the queue nor `unacked`).
_finished = multiprocessing.Value('q', 0)


def _count_one():
    with _finished.get_lock():
        _finished.value += 1
        last = _finished.value == int(os.environ.get('CELERY_BENCH_EXPECT', '0'))
    if last:
        open(os.path.join(os.environ['CELERY_BENCH_STATS'], 'done'), 'w').close()


@app.task(name='noop')
def noop(payload):
    now = time.time()
    with _lock:
        if _stats['first'] is None:
            _stats['first'] = now
        _stats['count'] += 1
        _stats['last'] = now
    _count_one()


@app.task(name='stamp')
def stamp(sent_us):
    started_us = time.time_ns() // 1000
    with _lock:
        _stats['lat_us'].append(started_us - sent_us)
        _stats['count'] += 1
    _count_one()


def _dump_stats(**_):
    out = os.environ.get('CELERY_BENCH_STATS')
    with _lock:
        if not out or _stats['count'] == 0:
            return  # the prefork parent runs no task
        data = dict(_stats, pid=os.getpid())
    tmp = os.path.join(out, f'{os.getpid()}.tmp')
    with open(tmp, 'w') as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(out, f'{os.getpid()}.json'))


# prefork children leave through os._exit (no atexit) but send worker_process_shutdown;
# the threads and solo pools run tasks in the main process, which exits normally.
signals.worker_process_shutdown.connect(_dump_stats, weak=False)
atexit.register(_dump_stats)


@signals.worker_ready.connect
def _ready(**_):
    out = os.environ.get('CELERY_BENCH_STATS')
    if out:
        open(os.path.join(out, 'ready'), 'w').close()


# --- benchmark side -----------------------------------------------------------------------


def payload(i):
    """The ~100-byte JSON payload ballast's bench and the BullMQ peer use."""
    return {'user': f'user-{i:08d}', 'action': 'resize', 'width': 640, 'height': 480,
            'pad': 'xxxxxxxxxxxxxxxx'}


class Bench:
    def __init__(self, tmp, sock):
        import redis  # the redis-py that kombu itself uses

        self.tmp = tmp
        self.sock = sock
        self.url = f'redis+socket://{sock}'
        self.admin = redis.Redis(unix_socket_path=sock)

    def counters(self):
        # One INFO call for both sections, so the two readings are taken at the same time.
        info = self.admin.info('cpu', 'commandstats')
        # INFO itself is left out, as ballast's bench does.
        cmds = sum(v['calls'] for k, v in info.items()
                   if k.startswith('cmdstat_') and k != 'cmdstat_info')
        return info['used_cpu_user'] + info['used_cpu_sys'], cmds

    @staticmethod
    def cost(before, after, n):
        return {
            'redis_cpu_us_per_task': (after[0] - before[0]) * 1e6 / n,
            'redis_cmds_per_task': (after[1] - before[1]) / n,
        }

    def reset(self):
        """FLUSHALL, then declare the default queue again: the binding kombu routes through
        (`_kombu.binding.celery`) is a Redis key too, and the app's producers remember it as
        declared, so without this a publish after FLUSHALL would be routed nowhere."""
        self.admin.flushall()
        with app.connection_for_write() as conn:
            app.amqp.queues[QUEUE](conn.default_channel).declare()

    def pending(self):
        """Messages still in the queue and delivered to a worker but not yet acked."""
        p = self.admin.pipeline(transaction=False)
        p.llen(QUEUE)
        p.hlen('unacked')
        return p.execute()

    def publish_batched(self, n, batch=1000):
        # kombu 5.7's Producer.batch(): publishes inside it go to one non-transactional Redis
        # pipeline, flushed every `batch` LPUSHes.
        with app.producer_or_acquire() as producer:
            for start in range(0, n, batch):
                with producer.batch(batch):
                    for i in range(start, min(n, start + batch)):
                        noop.apply_async((payload(i),), producer=producer)

    def check_pending(self, n, what):
        queued, unacked = self.pending()
        if queued != n or unacked:
            raise SystemExit(f'{what}: {queued} of {n} tasks queued, {unacked} unacked')

    def submit(self, name, n, fn):
        self.reset()
        before = self.counters()
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        after = self.counters()
        self.check_pending(n, name)  # every task published is in the queue
        return dict(mode=name, tasks=n, seconds=took, tasks_per_s=n / took,
                    **self.cost(before, after, n))

    def spawn_worker(self, pool, concurrency, prefetch, stats_dir, expect):
        env = dict(os.environ, CELERY_BENCH_BROKER=self.url, CELERY_BENCH_STATS=stats_dir,
                   CELERY_BENCH_PREFETCH=str(prefetch), CELERY_BENCH_EXPECT=str(expect),
                   PYTHONDONTWRITEBYTECODE='1')  # no __pycache__ left in the repo
        cmd = [sys.executable, '-m', 'celery', '-A', 'bench', 'worker', '-P', pool,
               '-c', str(concurrency), '-Q', QUEUE, '-n', f'bench-{pool}@%h',
               # mingle, gossip and heartbeat exchange state with *other* workers and
               # monitors; with one worker they only add start-up time and broker traffic.
               '--without-mingle', '--without-gossip', '--without-heartbeat',
               # INFO would log two lines per task (received, succeeded).
               '-l', 'WARNING']
        with open(os.path.join(stats_dir, 'worker.log'), 'w') as log:
            return subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def wait_file(proc, path, timeout):
        """Waits for a file the worker writes (`ready`, `done`): no Redis traffic."""
        deadline = time.time() + timeout
        while not os.path.exists(path):
            if proc.poll() is not None:
                raise SystemExit(f'worker exited ({proc.returncode}) before {path}')
            if time.time() > deadline:
                raise SystemExit(f'timed out waiting for {path}')
            time.sleep(0.005)

    @staticmethod
    def stop_worker(proc, stats_dir):
        """Warm shutdown (SIGTERM waits for running tasks), then the per-process stats."""
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SystemExit(f'worker did not stop; log in {stats_dir}/worker.log')
        files = [f for f in os.listdir(stats_dir) if f.endswith('.json')]
        return [json.load(open(os.path.join(stats_dir, f))) for f in files]

    def drain(self, n, pool, concurrency, prefetch):
        self.reset()
        self.publish_batched(n)
        self.check_pending(n, 'drain preload')
        stats_dir = tempfile.mkdtemp(prefix='stats-', dir=self.tmp)
        before = self.counters()
        spawned = time.time()
        proc = self.spawn_worker(pool, concurrency, prefetch, stats_dir, n)
        try:
            self.wait_file(proc, os.path.join(stats_dir, 'done'), timeout=max(120, n / 100))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        after = self.counters()
        per_proc = self.stop_worker(proc, stats_dir)
        ran = sum(s['count'] for s in per_proc)
        if ran != n:
            raise SystemExit(f'drain {pool} c={concurrency}: {ran} of {n} tasks ran')
        self.check_pending(0, 'drain end')
        first = min(s['first'] for s in per_proc)
        last = max(s['last'] for s in per_proc)
        return dict(pool=pool, concurrency=concurrency, prefetch_multiplier=prefetch,
                    tasks=n, processes_that_ran_tasks=len(per_proc),
                    tasks_per_s=n / (last - first), wall_seconds=last - spawned,
                    wall_tasks_per_s=n / (last - spawned), **self.cost(before, after, n))

    def latency(self, rate, seconds, pool, concurrency, prefetch):
        self.reset()
        stats_dir = tempfile.mkdtemp(prefix='stats-', dir=self.tmp)
        n = int(rate * seconds)
        proc = self.spawn_worker(pool, concurrency, prefetch, stats_dir, n)
        try:
            self.wait_file(proc, os.path.join(stats_dir, 'ready'), timeout=60)
            before = self.counters()
            t0 = time.perf_counter()
            for i in range(n):
                # a fixed schedule: a late send is followed by the next ones at once
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                stamp.delay(time.time_ns() // 1000)
            sent = time.perf_counter() - t0
            self.wait_file(proc, os.path.join(stats_dir, 'done'), timeout=300)
            after = self.counters()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        per_proc = self.stop_worker(proc, stats_dir)
        ms = sorted(us / 1000 for s in per_proc for us in s['lat_us'])
        if len(ms) != n:
            raise SystemExit(f'latency: {len(ms)} of {n} tasks reported a start')
        self.check_pending(0, 'latency end')

        def pct(p):  # nearest rank, as ballast's bench
            return ms[min(len(ms), max(1, -(-len(ms) * p // 100))) - 1]

        return dict(pool=pool, concurrency=concurrency, prefetch_multiplier=prefetch,
                    rate_per_s=rate, tasks=n, send_seconds=sent, p50_ms=pct(50),
                    p99_ms=pct(99), max_ms=ms[-1], **self.cost(before, after, n))


def start_redis(tmp):
    import redis

    sock = os.path.join(tmp, 'redis.sock')
    server = subprocess.Popen(
        ['redis-server', '--port', '0', '--unixsocket', sock, '--unixsocketperm', '700',
         '--save', '', '--appendonly', 'no', '--dir', tmp],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            if redis.Redis(unix_socket_path=sock).ping():
                return server, sock
        except (redis.exceptions.ConnectionError, FileNotFoundError):
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise SystemExit('redis-server did not start')
        time.sleep(0.02)


def table(title, cols, rows):
    def fmt(v):
        if isinstance(v, float):
            return f'{v:,.0f}' if abs(v) >= 100 else f'{v:.2f}'
        return f'{v:,}' if isinstance(v, int) else str(v)

    cells = [[fmt(r.get(c, '')) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    print(f'\n{title}')
    print('  '.join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in cells:
        print('  '.join(v.rjust(w) for v, w in zip(r, widths)))


def parse_config(s):
    pool, conc, pre = s.split(':')
    return pool, int(conc), int(pre)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=50_000, help='tasks per submit/drain workload')
    ap.add_argument('--drain', action='append', metavar='POOL:CONCURRENCY:PREFETCH',
                    help='worker settings to drain with (repeatable) [default: prefork:2:4, '
                         'prefork:2:64, threads:16:4, threads:64:4, solo:1:64]')
    ap.add_argument('--latency', action='append', metavar='POOL:CONCURRENCY:PREFETCH',
                    help='worker settings for the latency runs (repeatable) '
                         '[prefork:2:4, threads:16:4]')
    ap.add_argument('--rate', type=int, action='append',
                    help='latency: tasks per second (repeatable) [1000, 500]')
    ap.add_argument('--seconds', type=int, default=20, help='latency: seconds (0 = skip)')
    ap.add_argument('--json', action='store_true', help='print one JSON document')
    a = ap.parse_args()
    drains = [parse_config(s) for s in (a.drain or
              ['prefork:2:4', 'prefork:2:64', 'threads:16:4', 'threads:64:4', 'solo:1:64'])]

    import celery
    import kombu
    import redis

    tmp = tempfile.mkdtemp(prefix='celery-bench-')
    server = None
    try:
        server, sock = start_redis(tmp)
        b = Bench(tmp, sock)
        app.conf.broker_url = b.url
        n = a.n
        log = (lambda *m: None) if a.json else (lambda *m: print(*m, file=sys.stderr, flush=True))

        submit = []
        log(f'submit one by one ({n})')
        submit.append(b.submit('one by one (.delay)', n,
                               lambda: [noop.delay(payload(i)) for i in range(n)]))
        log('submit in batches of 1,000 (Producer.batch)')
        submit.append(b.submit('batches of 1,000 (Producer.batch)', n,
                               lambda: b.publish_batched(n)))

        def groups():
            for s in range(0, n, 1000):
                group(noop.s(payload(i)) for i in range(s, min(n, s + 1000))).apply_async()

        log('submit as groups of 1,000')
        submit.append(b.submit('group of 1,000', n, groups))

        drain = []
        for pool, conc, pre in drains:
            log(f'drain {pool} c={conc} prefetch x{pre}')
            drain.append(b.drain(n, pool, conc, pre))

        latency = []
        for spec in (a.latency or ['prefork:2:4', 'threads:16:4']) if a.seconds > 0 else []:
            pool, conc, pre = parse_config(spec)
            for rate in a.rate or [1000, 500]:
                log(f'latency {rate}/s for {a.seconds}s ({pool} c={conc})')
                latency.append(b.latency(rate, a.seconds, pool, conc, pre))

        info = b.admin.info('server')
        doc = {
            'versions': {'celery': celery.__version__, 'kombu': kombu.__version__,
                         'redis-py': redis.__version__, 'redis_server': info['redis_version'],
                         'python': sys.version.split()[0]},
            'n': n, 'submit': submit, 'drain': drain, 'latency': latency,
        }
        if a.json:
            print(json.dumps(doc, indent=2))
        else:
            v = doc['versions']
            print(f"Celery {v['celery']}, kombu {v['kombu']}, redis-py {v['redis-py']}, "
                  f"redis-server {v['redis_server']}, Python {v['python']}; N = {n:,}")
            cost = ['redis_cpu_us_per_task', 'redis_cmds_per_task']
            table('Submit', ['mode', 'tasks', 'seconds', 'tasks_per_s', *cost], submit)
            table('Drain (one worker process; tasks/s from first start to last finish)',
                  ['pool', 'concurrency', 'prefetch_multiplier', 'tasks_per_s',
                   'wall_seconds', 'wall_tasks_per_s', *cost], drain)
            if latency:
                table('Pickup latency (task start minus send time)',
                      ['pool', 'concurrency', 'rate_per_s', 'tasks', 'send_seconds', 'p50_ms',
                       'p99_ms', 'max_ms', *cost], latency)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()

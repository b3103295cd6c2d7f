// BullMQ on the workloads of `ballast bench` (submit one by one, in batches of 1,000, and a
// drain of pre-submitted no-op jobs by one worker at concurrency 16, 64, 256, 1024), with the
// Redis CPU per job from INFO before and after. It starts its own redis-server on a unix
// socket in a temporary folder (and flushes it between suites), so it never touches a Redis
// you run. Usage: npm install && node bench.mjs [n]
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const dir = mkdtempSync(join(tmpdir(), 'bullmq-bench-'));
const path = join(dir, 'redis.sock');
const server = spawn('redis-server', ['--port', '0', '--unixsocket', path, '--save', '',
  '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
process.on('exit', () => server.kill());
// Connect once the server listens: an early connection attempt fails and ioredis reports it.
for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 50));
const N = parseInt(process.argv[2] || '100000');
const conn = () => new IORedis({ path, maxRetriesPerRequest: null });
const admin = conn();
await new Promise((resolve) => admin.once('ready', resolve));
const info = async () => {
  const cpu = await admin.info('cpu');
  const f = (k) => parseFloat(cpu.match(new RegExp(k + ':([0-9.]+)'))[1]);
  return f('used_cpu_user') + f('used_cpu_sys');
};
const payload = (i) => ({ user: `user-${String(i).padStart(8, '0')}`, action: 'resize', width: 640, height: 480, pad: 'xxxxxxxxxxxxxxxx' });
// Flushes Redis, runs `prepare` (untimed), then times `fn` between two CPU readings.
async function measure(name, n, fn, prepare) {
  await admin.flushall();
  if (prepare) await prepare();
  const c0 = await info(); const t0 = performance.now();
  await fn();
  const t = (performance.now() - t0) / 1000; const c1 = await info();
  console.log(`${name}: ${Math.round(n / t)}/s, ${((c1 - c0) * 1e6 / n).toFixed(1)} us redis cpu/task`);
}
const q = new Queue('b', { connection: conn() });
// Adds the N jobs in addBulk calls of 1,000.
async function addAll() {
  for (let i = 0; i < N; i += 1000) await q.addBulk(Array.from({ length: Math.min(1000, N - i) }, (_, k) => ({ name: 'noop', data: payload(i + k) })));
}
await measure('submit one by one', N, async () => { for (let i = 0; i < N; i++) await q.add('noop', payload(i)); });
await measure('submit bulk 1000', N, addAll);
for (const conc of [16, 64, 256, 1024]) {
  await measure(`drain c=${conc}`, N, () => new Promise((resolve) => {
    let done = 0;
    const w = new Worker('b', async () => 1, { connection: conn(), concurrency: conc });
    w.on('completed', () => { if (++done === N) { w.close().then(resolve); } });
  }), addAll);
}
process.exit(0);

// The official Supabase Storage client (@supabase/storage-js, pinned in
// package.json) run against a Storage at <url>, operation by operation, and
// compared with what the same client got from the real server
// (tests/fixtures/storagejs-real.jsonl): `ok`, the error (name, message,
// status, statusCode) and the data, once ids, times, the run's folder and
// the base URL are replaced by placeholders.
//
//   node tests/storagejs/run.mjs <storage base URL> <service key>
//
// Prints one line per operation and exits 1 when any differs.

import { readFileSync } from 'node:fs';
import { StorageClient } from '@supabase/storage-js';

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error('usage: node tests/storagejs/run.mjs <storage base URL> <service key>');
  process.exit(2);
}

const fixture = new URL('../fixtures/storagejs-real.jsonl', import.meta.url);
const recorded = readFileSync(fixture, 'utf8')
  .split('\n')
  .filter((line) => line.trim() !== '')
  .map((line) => JSON.parse(line));

// The 70-byte PNG the recording uploaded (its MD5 is the recorded etag).
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==',
  'base64',
);
const run = `sjs_${Date.now()}`;
const path = `${run}/a.png`;

const client = (k) => new StorageClient(`${base}/storage/v1`, { apikey: k, Authorization: `Bearer ${k}` });
const storage = client(key);
const images = storage.from('images');
const missingBucket = storage.from('no-such-bucket');
const pngOptions = { contentType: 'image/png', upsert: false };

/// What a Response tells a page: status, type, caching, and whether the bytes are ours.
async function describe(response) {
  const bytes = Buffer.from(await response.arrayBuffer());
  return {
    data: {
      status: response.status,
      type: response.headers.get('content-type'),
      cache: response.headers.get('cache-control'),
      same: bytes.equals(PNG),
    },
    error: null,
  };
}

let signedFetch = null;
const operations = [
  ['getBucket', () => storage.getBucket('images')],
  ['getBucket-missing', () => storage.getBucket('no-such-bucket')],
  ['listBuckets', () => storage.listBuckets()],
  ['upload', () => images.upload(path, PNG, pngOptions)],
  ['upload-duplicate', () => images.upload(path, PNG, pngOptions)],
  ['upload-upsert', () => images.upload(path, PNG, { ...pngOptions, upsert: true })],
  // A Blob goes as a form, as a browser's File does.
  ['update', () => images.update(path, new Blob([PNG], { type: 'image/png' }))],
  ['upload-missing-bucket', () => missingBucket.upload(path, PNG, pngOptions)],
  ['upload-wrong-key', () => client('wrong-key').from('images').upload(`${run}/wk.png`, PNG, pngOptions)],
  ['getPublicUrl', async () => images.getPublicUrl(path)],
  ['fetch-public-url', async () => describe(await fetch(images.getPublicUrl(path).data.publicUrl))],
  [
    'download',
    async () => {
      const { data, error } = await images.download(path);
      return { data: data && { size: data.size, type: data.type }, error };
    },
  ],
  ['download-missing', () => images.download(`${run}/nope.png`)],
  ['exists', () => images.exists(path)],
  ['exists-missing', () => images.exists(`${run}/nope.png`)],
  ['info', () => images.info(path)],
  ['list', () => images.list(run)],
  [
    'createSignedUrl',
    async () => {
      const answer = await images.createSignedUrl(path, 60);
      // Fetched now, while the object exists; reported after the recorded operations.
      if (answer.data?.signedUrl) signedFetch = await describe(await fetch(answer.data.signedUrl));
      return answer;
    },
  ],
  ['copy', () => images.copy(path, `${run}/b.png`)],
  ['move', () => images.move(`${run}/b.png`, `${run}/c.png`)],
  ['remove', () => images.remove([path, `${run}/c.png`])],
  ['remove-again', () => images.remove([path, `${run}/c.png`])],
  ['remove-missing-bucket', () => missingBucket.remove([path])],
  ['download-after-remove', () => images.download(path)],
];

/// Placeholders for what differs between runs, as the recording wrote them.
function normalise(value) {
  if (typeof value === 'string') {
    return value
      .split(base)
      .join('<url>')
      .split(run)
      .join('sjs_<run>')
      .replace(/token=[\w-]+\.[\w-]+\.[\w-]+/, 'token=<token>')
      .replace(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, '<uuid>')
      .replace(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, '<ts>')
      .replace(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$/, '<ts>');
  }
  if (Array.isArray(value)) return value.map(normalise);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalise(v)]));
  }
  return value;
}

/// The claims of a signed URL's token, with the signed path normalised.
function tokenClaims(url) {
  const token = /token=([\w-]+\.[\w-]+\.[\w-]+)/.exec(url ?? '')?.[1];
  if (!token) return null;
  const [header, payload] = token
    .split('.')
    .slice(0, 2)
    .map((p) => JSON.parse(Buffer.from(p, 'base64url')));
  return {
    header,
    keys: Object.keys(payload).sort(),
    url: normalise(payload.url).replace(/^images\/sjs_\d+\//, 'images/sjs_<run>/'),
    scope: payload.scope,
    lifetime: payload.exp - payload.iat,
  };
}

/// JSON with keys sorted, so that key order never counts as a difference.
const canonical = (v) =>
  JSON.stringify(v, (_, x) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b)))
      : x,
  );

const differences = [];
const expected = new Map(recorded.map((r) => [r.name, r]));
for (const [name, operation] of operations) {
  let answer;
  try {
    answer = await operation();
  } catch (e) {
    answer = { data: null, error: { name: e.name, message: e.message } };
  }
  const got = normalise({
    name,
    ok: answer.error == null,
    data: answer.data ?? null,
    error: answer.error ? JSON.parse(JSON.stringify(answer.error)) : null,
  });
  const raw = expected.get(name);
  const real = normalise(raw);
  expected.delete(name);
  const problems = [];
  if (!real) problems.push('no recorded result');
  else {
    for (const field of ['ok', 'error', 'data']) {
      if (canonical(got[field]) !== canonical(real[field])) {
        problems.push(`${field}: got ${canonical(got[field])}, real ${canonical(real[field])}`);
      }
    }
    if (name === 'createSignedUrl') {
      const [ours, theirs] = [tokenClaims(answer.data?.signedUrl), tokenClaims(raw.data?.signedUrl)];
      if (canonical(ours) !== canonical(theirs)) {
        problems.push(`token: got ${canonical(ours)}, real ${canonical(theirs)}`);
      }
    }
  }
  console.log(`${problems.length === 0 ? 'same' : 'DIFF'} ${name}`);
  for (const p of problems) console.log(`     ${p}`);
  differences.push(...problems.map((p) => `${name}: ${p}`));
}
for (const name of expected.keys()) {
  differences.push(`${name}: recorded, but not run`);
}

// Beyond the recording: the signed URL serves the bytes to anyone holding it.
{
  const answer = signedFetch ?? { data: null };
  const ok = answer.data?.status === 200 && answer.data.type === 'image/png' && answer.data.same === true;
  console.log(`${ok ? 'same' : 'DIFF'} fetch-signed-url (expected 200, image/png, the uploaded bytes)`);
  if (!ok) differences.push(`fetch-signed-url: got ${canonical(answer.data)}`);
}

if (differences.length > 0) {
  console.log(`\n${differences.length} difference(s) from the real server:`);
  for (const d of differences) console.log(`  ${d}`);
  process.exit(1);
}
console.log(`\nall ${operations.length + 1} operations match the real server's results`);

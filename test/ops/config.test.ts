import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  SETTING_KEYS,
  describeConfig,
  parseArguments,
  parseConfig,
} from '../../src/coordinator/config.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

let directory: string;

before(async () => {
  directory = await mkdtemp(path.join(tmpdir(), 'appproxy-config-'));
});

after(async () => {
  await rm(directory, { recursive: true, force: true });
});

/** Writes a config file and returns its path. */
async function configFile(name: string, text: string): Promise<string> {
  const file = path.join(directory, name);
  await writeFile(file, text);
  return file;
}

/** Returns the message of the ConfigError that parsing throws. */
function configErrorOf(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    parseArguments(argv, env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    return error.message;
  }
  assert.fail('parsing succeeded');
}

const FULL_FILE = `
host = "0.0.0.0"
port = 7000
database_url = "postgres://app:s3cret-pw@db.example.test:5432/appproxy"
data_dir = "/var/lib/appproxy"
log_level = "warn"
pool_size = 20
heartbeat_interval_ms = 2000
heartbeat_misses = 4
changelog_max_age_s = 3600
changelog_max_count = 5000
changelog_compaction_interval_s = 60
session_send_timeout_ms = 20000
session_admission_concurrency = 16
manager_token = ["manager-one", "manager-two"]
worker_token = "worker-one,worker-two"
read_token = "read-one"
tls_cert = "/etc/appproxy/server.pem"
tls_key = "/etc/appproxy/server.key"
`;

describe('config precedence', () => {
  test('defaults apply with no source', () => {
    const config = parseConfig([], {});
    assert.equal(config.host, '127.0.0.1');
    assert.equal(config.port, 6030);
    assert.equal(config.databaseUrl, undefined);
    assert.equal(config.dataDir, './data');
    assert.equal(config.logLevel, 'info');
    assert.equal(config.poolSize, 10);
    assert.equal(config.heartbeatIntervalMs, 5000);
    assert.equal(config.heartbeatMisses, 3);
    assert.equal(config.changeLogMaxAgeMs, 86_400_000);
    assert.equal(config.changeLogMaxCount, 100_000);
    assert.deepEqual(config.tokens, { manager: undefined, worker: undefined, read: undefined });
  });

  test('file sets every setting by its key', async () => {
    const file = await configFile('full.toml', FULL_FILE);
    const config = parseConfig(['--config', file], {});
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.port, 7000);
    assert.equal(config.databaseUrl, 'postgres://app:s3cret-pw@db.example.test:5432/appproxy');
    assert.equal(config.dataDir, '/var/lib/appproxy');
    assert.equal(config.logLevel, 'warn');
    assert.equal(config.poolSize, 20);
    assert.equal(config.heartbeatIntervalMs, 2000);
    assert.equal(config.heartbeatMisses, 4);
    assert.equal(config.changeLogMaxAgeMs, 3_600_000);
    assert.equal(config.changeLogMaxCount, 5000);
    assert.deepEqual(config.tokens.manager, ['manager-one', 'manager-two']);
    assert.deepEqual(config.tokens.worker, ['worker-one', 'worker-two']);
    assert.deepEqual(config.tokens.read, ['read-one']);
    assert.deepEqual(config.tls, {
      certFile: '/etc/appproxy/server.pem',
      keyFile: '/etc/appproxy/server.key',
    });
  });

  test('full file covers every setting key', () => {
    const keysInFile = [...FULL_FILE.matchAll(/^(\w+) =/gm)].map((match) => match[1]);
    assert.deepEqual([...keysInFile].sort(), [...SETTING_KEYS].sort());
  });

  test('environment overrides file', async () => {
    const file = await configFile('env.toml', 'port = 7000\nlog_level = "warn"\n');
    const config = parseConfig(['--config', file], { APPPROXY_PORT: '7001' });
    assert.equal(config.port, 7001);
    assert.equal(config.logLevel, 'warn');
  });

  test('flag overrides environment and file', async () => {
    const file = await configFile('flag.toml', 'port = 7000\n');
    const config = parseConfig(['--config', file, '--port', '7002'], { APPPROXY_PORT: '7001' });
    assert.equal(config.port, 7002);
  });

  test('every non-secret setting has a flag', () => {
    const argv = [
      ['--host', '::1'],
      ['--port', '1'],
      ['--database-url', 'postgresql://u@h/d'],
      ['--data-dir', '/d'],
      ['--log-level', 'error'],
      ['--pool-size', '3'],
      ['--heartbeat-interval-ms', '250'],
      ['--heartbeat-misses', '5'],
      ['--changelog-max-age-s', '60'],
      ['--changelog-max-count', '7'],
    ].flat();
    const config = parseConfig(argv, {});
    assert.equal(config.host, '::1');
    assert.equal(config.port, 1);
    assert.equal(config.databaseUrl, 'postgresql://u@h/d');
    assert.equal(config.dataDir, '/d');
    assert.equal(config.logLevel, 'error');
    assert.equal(config.poolSize, 3);
    assert.equal(config.heartbeatIntervalMs, 250);
    assert.equal(config.heartbeatMisses, 5);
    assert.equal(config.changeLogMaxAgeMs, 60_000);
    assert.equal(config.changeLogMaxCount, 7);
  });

  test('tokens come from the environment', () => {
    const config = parseConfig([], {
      APPPROXY_MANAGER_TOKEN: ' m1 , m2 ',
      APPPROXY_WORKER_TOKEN: 'w1',
      APPPROXY_READ_TOKEN: '',
    });
    assert.deepEqual(config.tokens.manager, ['m1', 'm2']);
    assert.deepEqual(config.tokens.worker, ['w1']);
    assert.equal(config.tokens.read, undefined);
  });

  test('APPPROXY_CONFIG names the file', async () => {
    const file = await configFile('by-env.toml', 'pool_size = 42\n');
    assert.equal(parseConfig([], { APPPROXY_CONFIG: file }).poolSize, 42);
  });

  test('empty environment value leaves the file value', async () => {
    const file = await configFile('empty-env.toml', 'data_dir = "/from/file"\n');
    const config = parseConfig(['--config', file], { APPPROXY_DATA_DIR: '' });
    assert.equal(config.dataDir, '/from/file');
  });

  test('print-config is parsed as its own action', () => {
    assert.equal(parseArguments(['--print-config'], {}).kind, 'print-config');
    assert.equal(parseArguments([], {}).kind, 'run');
  });
});

describe('config errors', () => {
  test('invalid environment value names setting, value and source', () => {
    const message = configErrorOf([], { APPPROXY_PORT: 'http' });
    assert.match(message, /\bport\b/);
    assert.match(message, /"http"/);
    assert.match(message, /APPPROXY_PORT/);
    assert.match(message, /integer from 0 to 65535/);
  });

  test('invalid flag value names the flag', () => {
    const message = configErrorOf(['--heartbeat-misses', '0']);
    assert.match(message, /heartbeat_misses = "0" \(from --heartbeat-misses\)/);
  });

  test('invalid file value names the file', async () => {
    const file = await configFile('bad-level.toml', 'log_level = "loud"\n');
    const message = configErrorOf(['--config', file]);
    assert.match(message, /log_level = "loud"/);
    assert.ok(message.includes(file));
    assert.match(message, /one of trace, debug/);
  });

  test('every invalid setting is listed', () => {
    const message = configErrorOf([], { APPPROXY_PORT: '-1', APPPROXY_POOL_SIZE: '1' });
    assert.match(message, /port = "-1"/);
    assert.match(message, /pool_size = "1"/);
  });

  test('file value of wrong type is invalid', async () => {
    const file = await configFile('bad-type.toml', 'heartbeat_interval_ms = true\n');
    assert.match(configErrorOf(['--config', file]), /heartbeat_interval_ms = true/);
  });

  test('unknown file key is rejected', async () => {
    const file = await configFile('typo.toml', 'prot = 7000\n');
    const message = configErrorOf(['--config', file]);
    assert.match(message, /unknown keys prot/);
    assert.match(message, /known keys are host, port/);
  });

  test('malformed TOML is rejected', async () => {
    const file = await configFile('broken.toml', 'port = = 7000\n');
    assert.match(configErrorOf(['--config', file]), /not valid TOML/);
  });

  test('missing config file is rejected', () => {
    const file = path.join(directory, 'absent.toml');
    const message = configErrorOf(['--config', file]);
    assert.match(message, /Cannot read config file/);
    assert.ok(message.includes(file));
  });

  test('unknown flag is rejected', () => {
    assert.match(configErrorOf(['--prot', '1']), /unknown option '--prot'/);
  });

  test('invalid host is rejected', () => {
    assert.match(configErrorOf(['--host', 'not a host']), /host = "not a host"/);
  });

  test('database URL error hides its password', () => {
    const message = configErrorOf([], { DATABASE_URL: 'mysql://app:hunter2-pw@db/x' });
    assert.match(message, /database_url/);
    assert.ok(!message.includes('hunter2-pw'), message);
    assert.match(message, /mysql:\/\/app:\*\*\*@db\/x/);
  });

  test('token error hides the token', () => {
    const message = configErrorOf([], { APPPROXY_MANAGER_TOKEN: 'secret-part other-part' });
    assert.match(message, /manager_token/);
    assert.ok(!message.includes('secret-part'), message);
  });

  test('tokens have no flag', () => {
    assert.match(configErrorOf(['--manager-token', 'x']), /unknown option/);
  });
});

describe('config redaction', () => {
  test('describeConfig hides tokens and the database password', () => {
    const config = parseConfig([], {
      DATABASE_URL: 'postgres://app:pw-in-url@db:5432/x?sslpassword=key-pw',
      APPPROXY_MANAGER_TOKEN: 'manager-secret,manager-secret-2',
    });
    const text = JSON.stringify(describeConfig(config));
    for (const secret of ['pw-in-url', 'key-pw', 'manager-secret']) {
      assert.ok(!text.includes(secret), `${secret} in ${text}`);
    }
    assert.deepEqual(describeConfig(config).manager_token, ['***', '***']);
    assert.equal(describeConfig(config).worker_token, null);
  });

  test('describeConfig uses every setting key', () => {
    assert.deepEqual(Object.keys(describeConfig(parseConfig([], {}))), SETTING_KEYS);
  });
});

describe('coordinator process --print-config', () => {
  test('prints redacted effective settings and exits 0', async () => {
    const file = await configFile('print.toml', 'port = 7100\nheartbeat_misses = 6\n');
    const result = await runCoordinator(['--config', file, '--print-config', '--port', '7200'], {
      DATABASE_URL: 'postgres://app:process-pw@127.0.0.1:1/none',
      APPPROXY_MANAGER_TOKEN: 'process-manager-token',
      APPPROXY_HEARTBEAT_MISSES: '5',
    });
    assert.equal(result.code, 0, result.stderr);
    const printed = JSON.parse(result.stdout);
    assert.equal(printed.port, 7200);
    assert.equal(printed.heartbeat_misses, 5);
    assert.equal(printed.database_url, 'postgres://app:***@127.0.0.1:1/none');
    assert.deepEqual(printed.manager_token, ['***']);
    assert.ok(!result.stdout.includes('process-manager-token'));
    assert.ok(!result.stdout.includes('process-pw'));
  });

  test('invalid setting exits 2 with a message', async () => {
    const result = await runCoordinator(['--print-config'], { APPPROXY_PORT: '99999' });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /port = "99999" \(from APPPROXY_PORT\)/);
  });
});

/** Runs bin/appproxy-coordinator to completion; fails after 20 s. */
function runCoordinator(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(path.join(ROOT, 'bin', 'appproxy-coordinator'), args, {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`coordinator did not exit within 20 s:\n${stdout}${stderr}`));
    }, 20_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isCidr, isStorableText } from '../../proto/index.ts';

test('CIDR check accepts networks', () => {
  for (const cidr of ['10.0.0.0/8', '192.0.2.7/32', '::/0', '2001:db8::/32']) {
    assert.equal(isCidr(cidr), true, cidr);
  }
});

test('CIDR check rejects malformed values', () => {
  const invalid = ['10.0.0.0', '10.0.0.0/33', '1.2.3.4/08', 'fe80::1%eth0/64', '::/129', 'x/8', '10.0.0.0/8/8'];
  for (const cidr of invalid) assert.equal(isCidr(cidr), false, cidr);
});

test('storable text excludes NUL and unpaired surrogates', () => {
  assert.equal(isStorableText('jupyter-s1 ✓ 😀'), true);
  assert.equal(isStorableText('a\u0000b'), false);
  assert.equal(isStorableText('a\ud800b'), false);
  assert.equal(isStorableText('a\udc00'), false);
});

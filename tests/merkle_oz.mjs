// Reference side of tests/test_merkle.py: OpenZeppelin's SimpleMerkleTree on the same leaves.
// stdin: {"leaves": ["0x..", ...], "load": <optional dump to load and re-dump>}
// stdout: {"root", "proofs" (per input index), "dump", "verified", "loaded" (root of the loaded dump)}
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { SimpleMerkleTree } = createRequire(join(root, 'package.json'))('@openzeppelin/merkle-tree');

const input = JSON.parse(readFileSync(0, 'utf8'));
const out = {};
if (input.leaves) {
  const tree = SimpleMerkleTree.of(input.leaves);
  out.root = tree.root;
  out.proofs = input.leaves.map((_, i) => tree.getProof(i));
  out.byValue = input.leaves.map(leaf => tree.getProof(leaf));
  out.dump = tree.dump();
  out.verified = input.leaves.every((leaf, i) => SimpleMerkleTree.verify(tree.root, leaf, out.proofs[i]));
}
if (input.load) out.loaded = SimpleMerkleTree.load(input.load).root;
process.stdout.write(JSON.stringify(out));

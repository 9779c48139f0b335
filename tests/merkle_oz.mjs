// Reference side of tests/test_merkle.py: OpenZeppelin's SimpleMerkleTree on the same leaves.
// stdin:  {"trees": [["0x<leaf>", ...], ...], "dumps": [<dump to load>, ...]}
// stdout: {"trees": [{"root", "proofs" (by input index), "byValue" (by leaf value), "dump", "verified"}],
//          "loaded": [<root of each loaded dump, or "error: ...">]}
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { SimpleMerkleTree } = createRequire(join(root, 'package.json'))('@openzeppelin/merkle-tree');

const input = JSON.parse(readFileSync(0, 'utf8'));
const trees = (input.trees ?? []).map(leaves => {
  const tree = SimpleMerkleTree.of(leaves);
  const proofs = leaves.map((_, i) => tree.getProof(i));
  return {
    root: tree.root,
    proofs,
    byValue: leaves.map(leaf => tree.getProof(leaf)),
    dump: tree.dump(),
    verified: leaves.every((leaf, i) => SimpleMerkleTree.verify(tree.root, leaf, proofs[i])),
  };
});
const loaded = (input.dumps ?? []).map(dump => {
  try {
    return SimpleMerkleTree.load(dump).root;
  } catch (e) {
    return `error: ${e.message}`;
  }
});
process.stdout.write(JSON.stringify({ trees, loaded }));

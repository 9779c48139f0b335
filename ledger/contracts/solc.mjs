// Compile Solidity with the solc-js package pinned in package.json (no native solc needed).
// Reads standard JSON input on stdin, writes standard JSON output on stdout. Imports resolve
// against the repository root, then node_modules (so "@openzeppelin/contracts/..." works).
// Usage: node ledger/contracts/solc.mjs < input.json   (ledger/solc.py drives it)
import { readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'package.json'));
const solc = require('solc');

function findImports(path) {
  for (const base of [root, join(root, 'node_modules')]) {
    const file = join(base, path);
    if (existsSync(file)) return { contents: readFileSync(file, 'utf8') };
  }
  return { error: `File not found: ${path} (looked in the repository and node_modules; run make deps)` };
}

if (process.argv[2] === '--version') {
  process.stdout.write(solc.version() + '\n');
} else {
  const input = readFileSync(0, 'utf8');
  const output = JSON.parse(solc.compile(input, { import: findImports }));
  output.compilerVersion = solc.version();
  process.stdout.write(JSON.stringify(output));
}

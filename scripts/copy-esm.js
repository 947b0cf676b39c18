// Writes dist/index.mjs: the ES module face of the CommonJS build, so `import` and `require`
// share one copy of the library.
const fs = require('node:fs');
const path = require('node:path');
const names = Object.keys(require('../dist/index.js')).filter((n) => n !== '__esModule');
const text = `import lib from './index.js';\nexport const { ${names.join(', ')} } = lib;\nexport default lib;\n`;
fs.writeFileSync(path.join(__dirname, '..', 'dist', 'index.mjs'), text);

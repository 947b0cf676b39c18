// Writes dist/<entry>.mjs for each entry point: the ES module face of the CommonJS build, so
// `import` and `require` share one copy of the library.
const fs = require('node:fs');
const path = require('node:path');
for (const entry of ['index', 'socket.io']) {
  const names = Object.keys(require(`../dist/${entry}.js`)).filter((n) => n !== '__esModule');
  const text = `import lib from './${entry}.js';\nexport const { ${names.join(', ')} } = lib;\nexport default lib;\n`;
  fs.writeFileSync(path.join(__dirname, '..', 'dist', `${entry}.mjs`), text);
}

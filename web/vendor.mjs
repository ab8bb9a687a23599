// Copies the API docs viewers into services/api/static/vendor. ReDoc's standalone bundle shows Redocly's logo from
// cdn.redoc.ly in its menu: the page must load nothing from another host, so that one URL becomes an empty image.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';

const out = '../services/api/static/vendor';
mkdirSync(out, { recursive: true });
for (const file of ['swagger-ui-bundle.js', 'swagger-ui.css']) copyFileSync(`node_modules/swagger-ui-dist/${file}`, `${out}/${file}`);
const redoc = readFileSync('node_modules/redoc/bundles/redoc.standalone.js', 'utf8');
const logo = 'https://cdn.redoc.ly/redoc/logo-mini.svg';
if (!redoc.includes(logo)) throw new Error(`redoc no longer names ${logo}: check it loads nothing from a CDN`);
const empty = 'data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E';
writeFileSync(`${out}/redoc.standalone.js`, redoc.split(logo).join(empty));

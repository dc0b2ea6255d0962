// Copies the browser files the console uses from node_modules into cdrstats_web/static/vendor.
// Run by `npm run build` (the Makefile does it after `npm ci`); the copies are not committed.
import { copyFileSync, mkdirSync, existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "cdrstats_web", "static", "vendor");
const files = {
  "bootstrap/dist/css/bootstrap.min.css": "bootstrap.min.css",
  "bootstrap/dist/js/bootstrap.bundle.min.js": "bootstrap.bundle.min.js",
  "chart.js/dist/chart.umd.js": "chart.umd.js",
  // The dashboard's world map: choropleth charts for Chart.js, country shapes (Natural Earth
  // 1:110m, ids are ISO 3166-1 numeric codes) and the alpha-2 -> numeric code table.
  "chartjs-chart-geo/build/index.umd.min.js": "chartjs-chart-geo.min.js",
  "world-atlas/countries-110m.json": "countries-110m.json",
  "i18n-iso-countries/codes.json": "iso-3166-codes.json",
};
mkdirSync(out, { recursive: true });
for (const [from, to] of Object.entries(files)) {
  const src = join(here, "node_modules", from);
  if (!existsSync(src)) {
    console.error(`build-assets: ${src} is missing: run \`npm ci\` in web/ first`);
    process.exit(1);
  }
  copyFileSync(src, join(out, to));
}
writeFileSync(join(out, ".built"), new Date().toISOString() + "\n");
console.log(`build-assets: ${Object.keys(files).length} files copied to ${out}`);

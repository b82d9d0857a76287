// Validates Istio objects (a JSON array on stdin) against the JSON schemas that
// @kubernetes-models/istio generates from Istio's CRDs. Prints a JSON array: for each object,
// the list of problems (empty when valid). Called by validate.py.
//   node validate-istio.mjs TOOLS_NODE_DIR < objects.json
// Istio's CRD schemas allow unknown fields (the API server prunes them), so a misspelt field
// passes here; wrong types, wrong enums and missing required fields fail.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = join(process.argv[2], "node_modules", "@kubernetes-models", "istio");
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = String(obj.apiVersion).split("/");
  const file = join(modules, group, version ?? "", `${obj.kind}.js`);
  let mod;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch {
    results.push([`no Istio schema for ${obj.apiVersion} ${obj.kind}`]);
    continue;
  }
  try {
    new mod[obj.kind](obj).validate();
    results.push([]);
  } catch (e) {
    results.push([String(e.message ?? e)]);
  }
}
process.stdout.write(JSON.stringify(results));

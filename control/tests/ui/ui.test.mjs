// Drives the control plane web UI in Debian's headless Chromium through playwright-core: sign in, see GPUs,
// create a tenant, assign and reassign a GPU, see the usage chart; keeps screenshots as test artefacts.
import { chromium } from "playwright-core";
import path from "node:path";

const [url, adminKey, nodeToken, profileDir, artefacts] = process.argv.slice(2);
let passed = 0, failed = 0;
let tenantKey = null;

async function api(method, p, body, auth) {
  const headers = { "Content-Type": "application/json" };
  if (auth) headers.Authorization = "Bearer " + auth;
  const r = await fetch(url + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(data)}`);
  return data;
}

async function waitReady() {
  for (let i = 0; i < 200; i++) {
    try { await api("GET", "/v1/health"); return; } catch { await new Promise((r) => setTimeout(r, 100)); }
  }
  throw new Error("control plane did not start");
}

async function test(name, f) {
  try { await f(); passed++; console.log(`ok - ${name}`); }
  catch (e) { failed++; console.log(`FAILED - ${name}: ${e.message}`); }
}

function expect(cond, msg) { if (!cond) throw new Error(msg); }

await waitReady();
// A GPU server with two GPUs registers, as `vgpu server` would.
const gpu = (i) => ({ uuid: `GPU-ui-${i}`, index: i, name: "NVIDIA H100 80GB HBM3", model: "H100",
  memory_total_mib: 81920, memory_used_mib: 2048 * (i + 1), utilization_pct: 37 + 20 * i });
await api("POST", "/v1/servers", { name: "gpu-node-1", address: "127.0.0.1:7000", node_token: nodeToken, gpus: [gpu(0), gpu(1)] });

const ctx = await chromium.launchPersistentContext(profileDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 900 },
});
const page = ctx.pages()[0] || await ctx.newPage();
page.setDefaultTimeout(10000);
const external = [];
page.on("request", (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(e.message));

try {
  await test("sign-in page loads and every form control has a label", async () => {
    await page.goto(url + "/");
    await page.getByLabel("API key").waitFor();
    const unlabeled = await page.$$eval("input, select", (els) => els.filter((e) => {
      if (e.getAttribute("aria-label")) return false;
      return !(e.id && document.querySelector(`label[for="${e.id}"]`));
    }).map((e) => e.id || e.outerHTML));
    expect(unlabeled.length === 0, "unlabeled controls: " + unlabeled.join(", "));
  });

  await test("a wrong key is refused", async () => {
    await page.getByLabel("API key").fill("vgpu_wrong_0123456789abcdefghij");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Sign-in failed" }).waitFor();
  });

  await test("admin signs in with the admin key", async () => {
    await page.getByLabel("API key").fill(adminKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("Signed in as admin").waitFor();
  });

  await test("servers and GPUs are listed with utilization", async () => {
    const row = page.locator("#gpu-rows tr", { hasText: "GPU-ui-1" });
    await row.waitFor();
    expect((await row.textContent()).includes("gpu-node-1"), "server name missing");
    expect(await row.locator("meter").getAttribute("value") === "57", "utilization meter wrong");
  });

  await test("create a tenant", async () => {
    await page.getByLabel("New tenant name").fill("ui-lab");
    await page.getByRole("button", { name: "Create tenant" }).click();
    await page.locator("#tenant-rows tr", { hasText: "ui-lab" }).waitFor();
    await page.getByRole("button", { name: "Create key for ui-lab" }).click();
    const secret = await page.locator("#secret-value").textContent();
    expect(/^vgpu_[a-z0-9]+_/.test(secret), "no key shown: " + secret);
    tenantKey = secret;
  });

  await test("assign a GPU slice and see it listed", async () => {
    await page.getByLabel("Tenant", { exact: true }).selectOption({ label: "ui-lab" });
    await page.getByLabel("GPU", { exact: true }).selectOption("GPU-ui-0");
    await page.getByLabel("Memory limit (MiB, empty = whole GPU)").fill("20480");
    await page.getByRole("button", { name: "Assign GPU" }).click();
    const row = page.locator("#assign-rows tr", { hasText: "GPU-ui-0" });
    await row.waitFor();
    const text = await row.textContent();
    expect(text.includes("ui-lab") && text.includes("20480") && text.includes("0.25"), "row: " + text);
    const gpuRow = page.locator("#gpu-rows tr", { hasText: "GPU-ui-0" });
    await page.waitForFunction(() => document.querySelector("#gpu-rows")?.textContent.includes("20480 MiB"));
    expect((await gpuRow.textContent()).includes("25 %"), "GPU table does not show the assignment");
    // The API agrees with the page.
    const tok = (await api("POST", "/v1/auth/token", { api_key: adminKey })).token;
    const list = (await api("GET", "/v1/assignments", null, tok)).assignments;
    expect(list.length === 1 && list[0].memory_limit_mib === 20480, JSON.stringify(list));
  });

  await test("reassign the slice to the other GPU", async () => {
    const row = page.locator("#assign-rows tr", { hasText: "GPU-ui-0" });
    await row.getByLabel(/Move assignment/).selectOption("GPU-ui-1");
    await row.getByLabel("New memory limit (MiB)").fill("40960");
    await row.getByLabel("New compute share").fill("0.5");
    await row.getByRole("button", { name: "Save" }).click();
    await page.locator("#assign-rows tr", { hasText: "GPU-ui-1" }).filter({ hasText: "40960" }).waitFor();
  });

  await test("usage and cost chart is drawn", async () => {
    await page.getByRole("link", { name: "Usage and cost" }).click();
    const svg = page.locator("#usage-chart svg");
    await svg.waitFor();
    expect((await svg.getAttribute("aria-label")).includes("ui-lab"), "chart lacks the tenant");
    await page.screenshot({ path: path.join(artefacts, "ui-admin.png"), fullPage: true });
  });

  await test("a tenant signs in with its key and sees only its own GPU", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("API key").fill(tenantKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText(/Signed in as tenant/).waitFor();
    await page.locator("#gpu-rows tr", { hasText: "GPU-ui-1" }).waitFor();
    const gpus = await page.locator("#gpu-rows").textContent();
    expect(!gpus.includes("GPU-ui-0"), "tenant sees a GPU it was not assigned");
    expect(await page.locator("#tenants").isHidden(), "tenant sees the tenants section");
    expect(await page.locator("#assign-form").isHidden(), "tenant sees the assign form");
    await page.screenshot({ path: path.join(artefacts, "ui-tenant.png"), fullPage: true });
  });

  await test("no request left the machine and the page threw nothing", async () => {
    expect(external.length === 0, "external requests: " + external.join(", "));
    expect(consoleErrors.length === 0, "page errors: " + consoleErrors.join("; "));
  });
} finally {
  await page.screenshot({ path: path.join(artefacts, "ui-final.png"), fullPage: true }).catch(() => {});
  await ctx.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// An app's code in a Node.js project without the DOM's types and without skipLibCheck:
// the client's declarations must compile there (`npm run build` checks this file).
import { Client, NotFound, type ProxyOptions } from "../../dist/index.js";

const oauthd = new Client("http://127.0.0.1:6288", "key", { retries: 0 });
const upload: ProxyOptions = { body: new Uint8Array([1, 2, 3]), headers: { "content-type": "application/octet-stream" } };
export async function use(): Promise<string> {
  const created = await oauthd.states.create("app:oauth", { ttl_seconds: 600 });
  await oauthd.proxy.put("spotify", "default", "v1/me/player", { json: { play: true } });
  await oauthd.proxy.post("spotify", "default", "v1/upload", upload);
  try {
    await oauthd.states.consume(created.state, "app:oauth");
  } catch (e) {
    if (!(e instanceof NotFound)) throw e;
  }
  return (await oauthd.connections.token("spotify", "default", { minTtl: 120 })).access_token;
}

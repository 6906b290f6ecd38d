// Load driver for bench/vs_postgraphile.py: autocannon's programmatic API, one
// measurement per run. The plan comes as a JSON file (argv[2]):
//   { url, headers, connections, seconds, template, variables }
// Every request posts `template` with the string "__VARS__" (quoted) replaced by one
// entry of `variables` picked at random, so q1 asks for a different invoice each time.
// A response with a GraphQL `errors` member counts as an error, not as a request served.
// The result is one JSON line on stdout.
"use strict";

const fs = require("fs");
const autocannon = require("autocannon");

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const variables = plan.variables && plan.variables.length ? plan.variables : ["{}"];
const [head, tail] = plan.template.split('"__VARS__"');
if (tail === undefined) {
  throw new Error('the template has no "__VARS__" placeholder');
}

let gqlErrors = 0;
let firstError = null;

const instance = autocannon({
  url: plan.url,
  connections: plan.connections,
  duration: plan.seconds,
  // A request that takes longer than this is a timeout, not a hang of the bench.
  timeout: 30,
  requests: [
    {
      method: "POST",
      headers: Object.assign({ "content-type": "application/json" }, plan.headers),
      setupRequest(request) {
        const pick = variables[Math.floor(Math.random() * variables.length)];
        request.body = head + pick + tail;
        return request;
      },
      onResponse(status, body) {
        if (status !== 200 || body.includes('"errors"')) {
          gqlErrors += 1;
          if (firstError === null) firstError = `${status} ${body.slice(0, 300)}`;
        }
      },
    },
  ],
});

instance.on("done", (result) => {
  const seconds = result.duration;
  const served = result.requests.total - gqlErrors;
  process.stdout.write(
    JSON.stringify({
      requests: result.requests.total,
      served,
      seconds,
      rps: served / seconds,
      p50: result.latency.p50,
      p99: result.latency.p99,
      non2xx: result.non2xx,
      socket_errors: result.errors,
      timeouts: result.timeouts,
      gql_errors: gqlErrors,
      first_error: firstError,
    }) + "\n",
  );
});

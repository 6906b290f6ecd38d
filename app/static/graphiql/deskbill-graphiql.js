/*
 * Deskbill's GraphiQL page: queries and mutations over HTTP POST, subscriptions over
 * graphql-transport-ws (graphql-ws), both to the endpoint this page was served from,
 * and both with the headers typed in GraphiQL's headers editor. Websockets send
 * them as Apollo-style connectionParams.headers, which Deskbill accepts.
 */
(function () {
  "use strict";

  var endpoint = window.location.origin + window.location.pathname;
  var socketEndpoint = endpoint.replace(/^http/, "ws");
  var HEADERS = '{\n  "Authorization": "Bearer <paste your token here>"\n}';
  var QUERY = [
    "# Paste your token into the Headers tab below, then run:",
    "{",
    "  viewer {",
    "    role",
    "    user { name email }",
    "    organization { name }",
    "  }",
    "}",
    "",
  ].join("\n");

  // One graphql-ws client per set of headers: a new token opens a new connection.
  var sockets = {};

  function socketFor(headers) {
    var key = JSON.stringify(headers);
    if (!sockets[key]) {
      sockets[key] = graphqlWs.createClient({
        url: socketEndpoint,
        connectionParams: { headers: headers },
        lazy: true,
        retryAttempts: 0,
      });
    }
    return sockets[key];
  }

  // The operations of a document, read from its text: GraphiQL's own parsed document
  // can lag behind an edit made just before Run, so it is not relied on here.
  function operations(query) {
    var text = query.replace(/"""[\s\S]*?"""|"(?:\\.|[^"\\])*"|#[^\n]*/g, " ");
    var tokens = text.match(/[{}(]|[_A-Za-z][_0-9A-Za-z]*/g) || [];
    var found = [];
    var depth = 0;
    var pending = null;
    tokens.forEach(function (token) {
      if (token === "{") {
        if (depth === 0) {
          if (pending === null) {
            found.push({ kind: "query", name: null });
          } else if (pending.kind !== "fragment") {
            found.push(pending);
          }
          pending = null;
        }
        depth += 1;
      } else if (token === "}") {
        depth -= 1;
      } else if (depth === 0) {
        if (pending === null) {
          if (/^(query|mutation|subscription|fragment)$/.test(token)) {
            pending = { kind: token, name: null, named: false };
          }
        } else if (!pending.named) {
          pending.named = true;
          pending.name = token === "(" ? null : token;
        }
      }
    });
    return found;
  }

  function isSubscription(params) {
    var found = operations(params.query || "");
    var chosen = found.filter(function (op) {
      return op.name !== null && op.name === params.operationName;
    })[0] || found[0];
    return !!chosen && chosen.kind === "subscription";
  }

  function closedError(error) {
    // graphql-ws reports a closed socket as its CloseEvent: show its code and reason.
    if (error && typeof error.code === "number") {
      return new Error("The connection closed (" + error.code + "): " + (error.reason || "no reason given"));
    }
    if (Array.isArray(error)) {
      return new Error(error.map(function (e) { return e.message; }).join("\n"));
    }
    return error instanceof Error ? error : new Error(String(error));
  }

  function fetcher(params, options) {
    var headers = (options && options.headers) || {};
    if (isSubscription(params)) {
      return {
        subscribe: function (sink) {
          var stop = socketFor(headers).subscribe(params, {
            next: function (value) { sink.next(value); },
            error: function (error) { sink.error(closedError(error)); },
            complete: function () { sink.complete(); },
          });
          return { unsubscribe: stop };
        },
      };
    }
    return window
      .fetch(endpoint, {
        method: "POST",
        headers: Object.assign(
          { Accept: "application/json", "Content-Type": "application/json" },
          headers
        ),
        body: JSON.stringify(params),
      })
      .then(function (response) {
        return response.json();
      });
  }

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: QUERY,
      defaultHeaders: HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
    })
  );
})();

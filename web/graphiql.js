// GraphiQL from the service's own files (see graphiql.html): queries and mutations over
// HTTP, subscriptions over WebSocket (graphql-transport-ws). The headers editor is open and
// prefilled with the dashboard's credential; what is typed there goes with every request,
// and in the connection_init payload of subscriptions.
import { credentialHeaders, loadCredential } from "./js/credential.js";

const { React, ReactDOM, GraphiQL } = window;

const EXAMPLE = `# Task Service. Ctrl-Enter runs, Ctrl-Space completes;
# the book icon opens the docs. Subscriptions stream over WebSocket.

{
  dashboardStats {
    tasks { total pending ready running reviewing completed }
    agents { online busy offline }
  }
  agents { name status role skills }
}

# subscription Live { taskEvents(after: "0") { id type taskId actor message } }
`;

const url = new URL("/graphql", window.location.href);
const subscriptionUrl = new URL(url);
subscriptionUrl.protocol = url.protocol === "https:" ? "wss:" : "ws:";

const fetcher = GraphiQL.createFetcher({ url: url.href, subscriptionUrl: subscriptionUrl.href });
const credential = loadCredential();
const headers = credential ? credentialHeaders(credential) : { "X-API-Key": "" };

const root = ReactDOM.createRoot(document.getElementById("graphiql"));
root.render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: EXAMPLE,
    defaultHeaders: JSON.stringify(headers, null, 2),
    defaultEditorToolsVisibility: "headers",
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
  }),
);

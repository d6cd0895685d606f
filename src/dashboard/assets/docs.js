// The API reference: Swagger UI (vendored) over /api/v1/openapi.json. "Authorize" takes a
// token from `orrery token`; the dashboard's token of this tab is offered first.
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#ui",
  deepLinking: true,
  persistAuthorization: false,
  onComplete: () => {
    const token = sessionStorage.getItem("orrery.token");
    if (token) window.ui.preauthorizeApiKey("bearer", token);
  },
});

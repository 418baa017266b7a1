"use strict";
// Starts Swagger UI (served from the swagger-ui-bundle-v2 package) on the service's OpenAPI schema.
if (window.SwaggerUIBundle) {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
}

// `{{name}}`: a Weir plugin in JavaScript, built by componentize-qjs
// (QuickJS) or componentize-js (SpiderMonkey), as package.json pins.
//
// Request phase: sets the request header `x-hello` to the configured message,
// so the upstream sees it. Response phase: sets `x-plugin: {{name}}` on the
// answer. Config: `message` (text, optional); anything else is refused.

import { get as getConfig } from 'weir:plugin/config@0.2.0';

/** Parse and check the config JSON; throws a human message (a string). */
function parseConfig(json) {
  let raw;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw `config is not JSON: ${e.message}`;
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw 'config must be a table';
  }
  for (const key of Object.keys(raw)) {
    if (key !== 'message') throw `unknown field \`${key}\`, expected \`message\``;
  }
  const message = raw.message ?? 'hello from {{name}}';
  if (typeof message !== 'string' || message === '' || /[\x00-\x1f\x7f]/.test(message)) {
    throw 'message must be non-empty text without control characters';
  }
  return { message };
}

// The config never changes during an instance's life: parse it once.
let cached;
function settings() {
  if (cached === undefined) cached = parseConfig(getConfig());
  return cached;
}

export const guest = {
  // Runs once at load: a thrown string makes Weir refuse to start.
  validateConfig(json) {
    parseConfig(json);
    return {
      onRequest: true,
      onResponse: true,
      requestBody: false,
      responseBody: false,
      // Given nothing it does not read: no header, connection or property.
      requestHeaders: { tag: 'named', val: [] },
      responseHeaders: { tag: 'named', val: [] },
      connection: false,
      properties: false,
    };
  },

  onRequest(req) {
    return {
      tag: 'continue',
      val: {
        method: undefined,
        path: undefined,
        query: undefined,
        headers: [{ tag: 'set', val: ['x-hello', settings().message] }],
        upstream: undefined,
        properties: [],
        cache: undefined,
        body: undefined,
      },
    };
  },

  onResponse(resp) {
    return {
      status: undefined,
      headers: [{ tag: 'set', val: ['x-plugin', '{{name}}'] }],
      body: undefined,
    };
  },
};

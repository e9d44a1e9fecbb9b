// CORS for Weir, in JavaScript: built with QuickJS (componentize-qjs, the
// default engine; package.json) and with SpiderMonkey (componentize-js;
// spidermonkey/package.json) from this one file, so it uses only what both
// engines have (no TextEncoder, no Intl).
//
// Request phase: a preflight (OPTIONS with Origin and
// Access-Control-Request-Method) is answered here, 204 with the allow headers
// or 403 with a JSON reason; upstream never sees it. Response phase: an
// actual request from an allowed origin gets Access-Control-Allow-Origin and
// friends added to the upstream's answer.
//
// Contract weir:plugin@0.2.0. The plugin is given only the three request
// headers it reads and the response's Vary. The response phase is not sent
// the request: the request phase leaves the Access-Control-Allow-Origin value
// for an allowed origin as the property `cors.allow-origin`, and the response
// phase reads it back.
//
// Config (proxy.toml, `[plugins.NAME.config]`):
//   allowed_origins   = ["https://app.example.com"]   exact origins, or "*"
//   allowed_methods   = ["GET", "HEAD", "POST"]       the default
//   allowed_headers   = ["content-type"]              or "*": echo what is asked
//   exposed_headers   = ["x-request-id"]
//   allow_credentials = false
//   max_age           = 600                           seconds, optional

import { get as getConfig } from 'weir:plugin/config@0.2.0';
import { log } from 'weir:plugin/log@0.2.0';

const KEYS = new Set([
  'allowed_origins',
  'allowed_methods',
  'allowed_headers',
  'exposed_headers',
  'allow_credentials',
  'max_age',
]);
// RFC 9110 token characters: method and header names.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// scheme://host[:port], nothing after: what browsers send in Origin.
const ORIGIN = /^[a-z][a-z0-9+.\-]*:\/\/(\[[0-9a-f:.]+\]|[a-z0-9\-._~%!$&'()*+,;=]+)(:[0-9]{1,5})?$/;
const MAX_AGE_LIMIT = 86400 * 365;
// What the request phase hands the response phase.
const ALLOW_ORIGIN = 'cors.allow-origin';

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
    if (!KEYS.has(key)) {
      throw `unknown field \`${key}\`, expected one of ${[...KEYS].map((k) => `\`${k}\``).join(', ')}`;
    }
  }

  const origins = stringList(raw, 'allowed_origins', undefined);
  if (origins.length === 0) throw 'allowed_origins: must list at least one origin (or "*")';
  const anyOrigin = origins.includes('*');
  const exactOrigins = new Set();
  for (const origin of origins) {
    if (origin === '*') continue;
    if (!ORIGIN.test(origin)) {
      throw `allowed_origins: ${JSON.stringify(origin)} is not an origin like "https://app.example.com" (lower-case, no path or trailing slash)`;
    }
    exactOrigins.add(origin);
  }

  const methods = stringList(raw, 'allowed_methods', ['GET', 'HEAD', 'POST']);
  if (methods.length === 0) throw 'allowed_methods: must list at least one method';
  for (const method of methods) {
    if (!TOKEN.test(method) || method === '*') {
      throw `allowed_methods: ${JSON.stringify(method)} is not a method name`;
    }
  }

  const headers = stringList(raw, 'allowed_headers', []);
  const anyHeader = headers.includes('*');
  for (const name of headers) {
    if (name !== '*' && !TOKEN.test(name)) {
      throw `allowed_headers: ${JSON.stringify(name)} is not a header name`;
    }
  }
  const exposed = stringList(raw, 'exposed_headers', []);
  for (const name of exposed) {
    if (!TOKEN.test(name) || name === '*') {
      throw `exposed_headers: ${JSON.stringify(name)} is not a header name`;
    }
  }

  const credentials = raw.allow_credentials ?? false;
  if (typeof credentials !== 'boolean') throw 'allow_credentials: must be true or false';
  if (credentials && anyOrigin) {
    throw 'allowed_origins: "*" cannot be combined with allow_credentials = true; list the origins';
  }

  const maxAge = raw.max_age;
  if (maxAge !== undefined && !(Number.isInteger(maxAge) && maxAge >= 0 && maxAge <= MAX_AGE_LIMIT)) {
    throw `max_age: must be a whole number of seconds between 0 and ${MAX_AGE_LIMIT}`;
  }

  return {
    anyOrigin,
    exactOrigins,
    methods: new Set(methods),
    methodsValue: methods.join(', '),
    anyHeader,
    headers: new Set(headers.map((h) => h.toLowerCase())),
    headersValue: headers.filter((h) => h !== '*').join(', '),
    exposedValue: exposed.join(', '),
    credentials,
    maxAge,
  };
}

function stringList(raw, key, fallback) {
  const value = raw[key];
  if (value === undefined) {
    if (fallback === undefined) throw `${key}: missing`;
    return fallback;
  }
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw `${key}: must be a list of strings`;
  }
  return value;
}

// The config never changes during an instance's life: parse it once.
let cached;
function settings() {
  if (cached === undefined) cached = parseConfig(getConfig());
  return cached;
}

function header(headers, name) {
  const found = headers.find(([n]) => n === name);
  return found === undefined ? undefined : found[1];
}

function originAllowed(cfg, origin) {
  return cfg.anyOrigin || cfg.exactOrigins.has(origin);
}

/** The Access-Control-Allow-Origin value for an allowed origin. */
function allowOrigin(cfg, origin) {
  return cfg.anyOrigin ? '*' : origin;
}

const NO_CHANGES = {
  method: undefined,
  path: undefined,
  query: undefined,
  headers: [],
  upstream: undefined,
  properties: [],
  cache: undefined,
  body: undefined,
};

/** `text` as UTF-8 bytes, as TextEncoder would (QuickJS has none). */
function utf8(text) {
  const bytes = [];
  for (const char of text) {
    let c = char.codePointAt(0);
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // a lone surrogate
    if (c < 0x80) {
      bytes.push(c);
    } else if (c < 0x800) {
      bytes.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    } else {
      bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    }
  }
  return new Uint8Array(bytes);
}

function deny(reason) {
  return {
    tag: 'respond',
    val: {
      status: 403,
      headers: [
        ['content-type', 'application/json'],
        ['vary', 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers'],
      ],
      body: utf8(JSON.stringify({ error: reason })),
    },
  };
}

function preflight(cfg, origin, method, requested) {
  if (!originAllowed(cfg, origin)) {
    log('debug', `preflight denied: origin ${origin}`);
    return deny('origin not allowed');
  }
  if (!cfg.methods.has(method)) {
    log('debug', `preflight denied: method ${method}`);
    return deny('method not allowed');
  }
  const asked = (requested ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase())
    .filter((h) => h !== '');
  if (!cfg.anyHeader) {
    const refused = asked.find((h) => !cfg.headers.has(h));
    if (refused !== undefined) {
      log('debug', `preflight denied: header ${refused}`);
      return deny(`header not allowed: ${refused}`);
    }
  }

  const headers = [
    ['access-control-allow-origin', allowOrigin(cfg, origin)],
    ['access-control-allow-methods', cfg.methodsValue],
    ['vary', 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers'],
  ];
  // "*" echoes the request's list: a literal "*" means nothing to a
  // browser sending credentials.
  const allowHeaders = cfg.anyHeader ? asked.join(', ') : cfg.headersValue;
  if (allowHeaders !== '') headers.push(['access-control-allow-headers', allowHeaders]);
  if (cfg.credentials) headers.push(['access-control-allow-credentials', 'true']);
  if (cfg.maxAge !== undefined) headers.push(['access-control-max-age', String(cfg.maxAge)]);
  return { tag: 'respond', val: { status: 204, headers, body: new Uint8Array() } };
}

export const guest = {
  validateConfig(json) {
    const cfg = parseConfig(json);
    return {
      onRequest: true,
      onResponse: true,
      requestBody: false,
      responseBody: false,
      requestHeaders: {
        tag: 'named',
        val: ['origin', 'access-control-request-method', 'access-control-request-headers'],
      },
      // Vary is read only to add Origin to it, which "*" never needs.
      responseHeaders: { tag: 'named', val: cfg.anyOrigin ? [] : ['vary'] },
      connection: false,
      properties: true,
    };
  },

  onRequest(req) {
    const cfg = settings();
    const origin = header(req.headers, 'origin');
    const method = header(req.headers, 'access-control-request-method');
    if (req.method === 'OPTIONS' && origin !== undefined && method !== undefined) {
      return preflight(cfg, origin, method, header(req.headers, 'access-control-request-headers'));
    }
    if (origin === undefined || !originAllowed(cfg, origin)) {
      return { tag: 'continue', val: NO_CHANGES };
    }
    const properties = [[ALLOW_ORIGIN, { tag: 'text', val: allowOrigin(cfg, origin) }]];
    return { tag: 'continue', val: { ...NO_CHANGES, properties } };
  },

  onResponse(resp) {
    const cfg = settings();
    const ops = [];
    // The answer depends on Origin unless every origin gets "*": say so to
    // caches, for requests with and without Origin alike.
    if (!cfg.anyOrigin && !varies(resp.headers, 'origin')) {
      ops.push({ tag: 'append', val: ['vary', 'Origin'] });
    }
    const allowed = resp.properties.find(([name]) => name === ALLOW_ORIGIN);
    const value = allowed !== undefined && allowed[1].tag === 'text' ? allowed[1].val : undefined;
    // Properties are shared by the chain: send only a value this config
    // allows, so a property another plugin set cannot widen the policy.
    if (value !== undefined && (cfg.anyOrigin ? value === '*' : cfg.exactOrigins.has(value))) {
      ops.push({ tag: 'set', val: ['access-control-allow-origin', value] });
      if (cfg.credentials) ops.push({ tag: 'set', val: ['access-control-allow-credentials', 'true'] });
      if (cfg.exposedValue !== '') {
        ops.push({ tag: 'set', val: ['access-control-expose-headers', cfg.exposedValue] });
      }
    }
    return { status: undefined, headers: ops, body: undefined };
  },
};

/** Whether the response's Vary already names `name` (or is "*"). */
function varies(headers, name) {
  return headers.some(
    ([n, v]) => n === 'vary' && v.split(',').some((part) => {
      const token = part.trim().toLowerCase();
      return token === name || token === '*';
    }),
  );
}

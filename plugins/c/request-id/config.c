// Config parsing for the request-id plugin: a strict reader for the one
// JSON shape the host sends (an object with string keys), refusing unknown
// keys so a typo is an error rather than a setting that silently does
// nothing.
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

// Headers that frame the message belong to the host: a plugin that sets them
// fails its call, so refuse them at load instead.
static const char *const HOST_HEADERS[] = {
    "connection", "content-length", "host",    "http2-settings", "keep-alive",
    "proxy-connection", "te",       "trailer", "transfer-encoding", "upgrade",
};

struct reader {
    const char *at;
    const char *end;
    char *error;
    size_t error_size;
};

static bool fail(struct reader *r, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(r->error, r->error_size, format, args);
    va_end(args);
    return false;
}

static void skip_space(struct reader *r) {
    while (r->at < r->end && (*r->at == ' ' || *r->at == '\t' || *r->at == '\n' || *r->at == '\r')) {
        r->at++;
    }
}

static bool eat(struct reader *r, char c) {
    skip_space(r);
    if (r->at < r->end && *r->at == c) {
        r->at++;
        return true;
    }
    return false;
}

// Reads a JSON string into `out` (NUL-terminated, at most `size - 1`
// bytes). Escapes other than \" \\ \/ and \u00XX (ASCII) make it "too
// strange" for a header name: that is reported as too long, which callers
// turn into "not a header name".
static bool read_string(struct reader *r, char *out, size_t size, bool *fits) {
    size_t n = 0;
    *fits = true;
    if (!eat(r, '"')) return fail(r, "config is not JSON: expected a string");
    while (r->at < r->end && *r->at != '"') {
        char c = *r->at++;
        if (c == '\\') {
            if (r->at >= r->end) break;
            char e = *r->at++;
            if (e == '"' || e == '\\' || e == '/') {
                c = e;
            } else if (e == 'u' && r->end - r->at >= 4) {
                unsigned code = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *r->at++;
                    code <<= 4;
                    if (h >= '0' && h <= '9') code |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') code |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') code |= (unsigned)(h - 'A' + 10);
                    else return fail(r, "config is not JSON: bad \\u escape");
                }
                if (code == 0 || code >= 0x80) *fits = false;
                c = (char)code;
            } else {
                // \b \f \n \r \t: control characters, never in a name.
                *fits = false;
                c = '?';
            }
        }
        if (n + 1 < size) out[n++] = c;
        else *fits = false;
    }
    if (!eat(r, '"')) return fail(r, "config is not JSON: unterminated string");
    out[n] = '\0';
    return true;
}

static bool is_token_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool check_header(struct reader *r, char *name, bool fits) {
    size_t len = strlen(name);
    for (size_t i = 0; i < len; i++) {
        if (name[i] >= 'A' && name[i] <= 'Z') name[i] = (char)(name[i] - 'A' + 'a');
    }
    bool token = fits && len > 0;
    for (size_t i = 0; token && i < len; i++) token = is_token_char(name[i]);
    if (!token) {
        return fail(r, "header: \"%s\" is not a header name (at most %d letters, digits and "
                       "!#$%%&'*+-.^_`|~)", name, HEADER_NAME_MAX);
    }
    for (size_t i = 0; i < sizeof HOST_HEADERS / sizeof *HOST_HEADERS; i++) {
        if (strcmp(name, HOST_HEADERS[i]) == 0) {
            return fail(r, "header: \"%s\" frames the message and belongs to the proxy", name);
        }
    }
    return true;
}

bool config_parse(const char *json, size_t len, struct config *config, char *error,
                  size_t error_size) {
    struct reader r = {json, json + len, error, error_size};
    strcpy(config->header, "x-request-id");
    if (!eat(&r, '{')) return fail(&r, "config must be a table");
    if (eat(&r, '}')) goto end;
    do {
        char key[32];
        bool fits;
        if (!read_string(&r, key, sizeof key, &fits)) return false;
        if (!fits || strcmp(key, "header") != 0) {
            return fail(&r, "unknown field `%s`, expected `header`", key);
        }
        if (!eat(&r, ':')) return fail(&r, "config is not JSON: expected ':'");
        skip_space(&r);
        if (r.at >= r.end || *r.at != '"') return fail(&r, "header: must be a header name (text)");
        if (!read_string(&r, config->header, sizeof config->header, &fits)) return false;
        if (!check_header(&r, config->header, fits)) return false;
    } while (eat(&r, ','));
    if (!eat(&r, '}')) return fail(&r, "config is not JSON: expected '}'");
end:
    skip_space(&r);
    if (r.at != r.end) return fail(&r, "config is not JSON: trailing characters");
    return true;
}

bool request_id_is_sane(const char *value, size_t len) {
    if (len == 0 || len > REQUEST_ID_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = value[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == ':';
        if (!ok) return false;
    }
    return true;
}

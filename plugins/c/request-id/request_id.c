// `request-id`: a Weir plugin in C.
//
// Request phase: a request whose id header is missing, repeated or not sane
// (1 to 128 letters, digits and `-_.:`) gets one: the host's own request id
// (`req.id`), else one made from the clock and a counter. The id goes down
// the chain as the text property `request-id` and up to the upstream in the
// header. Response phase: the answer carries the same header and id.
//
// Config (proxy.toml, `[plugins.NAME.config]`):
//   header = "x-request-id"     the default; any header name the proxy does
//                                not own
//
// Bindings: `plugin.h`, generated from wit/plugin.wit by wit-bindgen's C
// generator. Ownership follows the canonical ABI: the arguments of an
// export are the plugin's to free, and everything in its answer must be
// malloc'ed, because the bindings free it once the host has copied it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "plugin.h"

static const char PROPERTY[] = "request-id";

// The config the host accepted. Parsed again on every call: with `fresh`
// instances (the default) nothing survives between calls anyway.
static bool current_config(struct config *config) {
    plugin_string_t json;
    weir_plugin_config_get(&json);
    char error[256];
    bool ok = config_parse((const char *)json.ptr, json.len, config, error, sizeof error);
    plugin_string_free(&json);
    return ok;
}

static bool equals(const plugin_string_t *s, const char *text) {
    size_t len = strlen(text);
    return s->len == len && memcmp(s->ptr, text, len) == 0;
}

// The one value of header `name`, or NULL when it is absent or repeated.
static const plugin_string_t *single_header(const weir_plugin_types_headers_t *headers,
                                            const char *name) {
    const plugin_string_t *found = NULL;
    for (size_t i = 0; i < headers->len; i++) {
        if (equals(&headers->ptr[i].f0, name)) {
            if (found != NULL) return NULL;
            found = &headers->ptr[i].f1;
        }
    }
    return found;
}

// A fresh id from the wall clock and a per-instance counter, for the host
// that somehow gave none.
static void generated_id(plugin_string_t *out) {
    static uint32_t counter;
    char id[40];
    snprintf(id, sizeof id, "c-%llx-%x", (unsigned long long)weir_plugin_clock_now_ms(),
             counter++);
    plugin_string_dup(out, id);
}

static void *checked_malloc(size_t size) {
    void *p = malloc(size);
    // Out of memory in a plugin: trap, and the host fails this request.
    if (p == NULL) abort();
    return p;
}

bool exports_weir_plugin_guest_validate_config(plugin_string_t *json,
                                               exports_weir_plugin_guest_plugin_info_t *ret,
                                               plugin_string_t *err) {
    struct config config;
    char error[256];
    bool ok = config_parse((const char *)json->ptr, json->len, &config, error, sizeof error);
    plugin_string_free(json);
    if (!ok) {
        plugin_string_dup(err, error);
        return false;
    }
    ret->on_request = true;
    ret->on_response = true;
    ret->request_body = false;
    ret->response_body = false;
    return true;
}

void exports_weir_plugin_guest_on_request(exports_weir_plugin_guest_request_t *req,
                                          exports_weir_plugin_guest_request_action_t *ret) {
    struct config config;
    if (!current_config(&config)) abort(); // validate-config accepted this very text

    memset(ret, 0, sizeof *ret);
    ret->tag = WEIR_PLUGIN_TYPES_REQUEST_ACTION_CONTINUE;
    weir_plugin_types_request_changes_t *changes = &ret->val.continue_;

    plugin_string_t id;
    const plugin_string_t *sent = single_header(&req->headers, config.header);
    bool keep = sent != NULL && request_id_is_sane((const char *)sent->ptr, sent->len);
    if (keep) {
        plugin_string_dup_n(&id, (const char *)sent->ptr, sent->len);
    } else if (request_id_is_sane((const char *)req->id.ptr, req->id.len)) {
        plugin_string_dup_n(&id, (const char *)req->id.ptr, req->id.len);
    } else {
        generated_id(&id);
    }

    if (!keep) {
        weir_plugin_types_header_op_t *op = checked_malloc(sizeof *op);
        op->tag = WEIR_PLUGIN_TYPES_HEADER_OP_SET;
        plugin_string_dup(&op->val.set.f0, config.header);
        plugin_string_dup_n(&op->val.set.f1, (const char *)id.ptr, id.len);
        changes->headers.ptr = op;
        changes->headers.len = 1;
    }

    weir_plugin_types_tuple2_string_value_t *property = checked_malloc(sizeof *property);
    plugin_string_dup(&property->f0, PROPERTY);
    property->f1.tag = WEIR_PLUGIN_TYPES_VALUE_TEXT;
    property->f1.val.text = id; // the answer owns it now
    changes->properties.ptr = property;
    changes->properties.len = 1;

    exports_weir_plugin_guest_request_free(req);
}

void exports_weir_plugin_guest_on_response(exports_weir_plugin_guest_request_t *req,
                                           exports_weir_plugin_guest_response_head_t *resp,
                                           exports_weir_plugin_guest_response_changes_t *ret) {
    struct config config;
    if (!current_config(&config)) abort(); // validate-config accepted this very text

    memset(ret, 0, sizeof *ret);
    // The id chosen in the request phase: the property, else the header the
    // upstream got, else the host's.
    const plugin_string_t *id = NULL;
    for (size_t i = 0; i < req->properties.len; i++) {
        weir_plugin_types_tuple2_string_value_t *p = &req->properties.ptr[i];
        if (equals(&p->f0, PROPERTY) && p->f1.tag == WEIR_PLUGIN_TYPES_VALUE_TEXT) {
            id = &p->f1.val.text;
        }
    }
    if (id == NULL) id = single_header(&req->headers, config.header);
    if (id == NULL || !request_id_is_sane((const char *)id->ptr, id->len)) id = &req->id;

    if (request_id_is_sane((const char *)id->ptr, id->len)) {
        weir_plugin_types_header_op_t *op = checked_malloc(sizeof *op);
        op->tag = WEIR_PLUGIN_TYPES_HEADER_OP_SET;
        plugin_string_dup(&op->val.set.f0, config.header);
        plugin_string_dup_n(&op->val.set.f1, (const char *)id->ptr, id->len);
        ret->headers.ptr = op;
        ret->headers.len = 1;
    }

    exports_weir_plugin_guest_request_free(req);
    exports_weir_plugin_guest_response_head_free(resp);
}

// Routes that serve the site and the server's state: the web page and its files, the OpenAPI
// document, /health, /metrics and the growth curve.
#include "assets.h"
#include "routes.h"
#include "request_fields.h"

#include "fetalhc/growth.h"

#include <filesystem>
#include <map>
#include <sstream>

namespace fetalhc::server {
namespace {

std::string content_type_for(const std::string& name) {
    static const std::map<std::string, std::string> types{
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},         {".svg", "image/svg+xml"},
        {".png", "image/png"},                 {".ico", "image/x-icon"},
        {".woff2", "font/woff2"},              {".txt", "text/plain; charset=utf-8"}};
    auto it = types.find(std::filesystem::path(name).extension().string());
    return it == types.end() ? "application/octet-stream" : it->second;
}

HttpResponse asset(const std::string& name) {
    for (const auto& a : embedded_assets())
        if (name == a.name) {
            HttpResponse r;
            r.content_type = content_type_for(name);
            r.body.assign(reinterpret_cast<const char*>(a.data), a.size);
            return r;
        }
    fail(ErrorCode::NotFound, "no file '" + name + "' in the web page built into this server");
}

HttpResponse index_page(const HttpRequest&, Services&) { return asset("index.html"); }

HttpResponse static_file(const HttpRequest& req, Services&) { return asset(req.path_params.at("file")); }

HttpResponse openapi(const HttpRequest&, Services& s) {
    HttpResponse r;
    r.body = s.openapi;
    return r;
}

// Who the request's token belongs to: the page shows it once signed in.
HttpResponse me(const HttpRequest& req, Services&) {
    return json_response(200, {{"user", req.user.empty() ? json(nullptr) : json(req.user)}, {"role", req.role}});
}

HttpResponse health(const HttpRequest&, Services& s) {
    switch (s.engine.state()) {
        case Engine::State::Ready: {
            const auto measurer = *s.engine.measurer();
            const ModelInfo& info = measurer->segmenter().info();
            // Whether images of other planes are refused (the head check, --head-check), and where.
            const HeadCheck* check = measurer->head_check();
            const json head_check = check ? json{{"refuse_below", check->refuse_below()}, {"review_below", check->review_below()}}
                                          : json(nullptr);
            return json_response(200, {{"status", "ready"},
                                       {"model", std::filesystem::path(info.path).filename().string()},
                                       {"parameters", info.parameters},
                                       {"inference_slots", s.engine.slots().total()},
                                       {"head_check", head_check}});
        }
        case Engine::State::Loading: {
            json j = error_body({ErrorCode::ModelLoading, "the model is still loading"});
            j["status"] = "loading";
            return json_response(503, j);
        }
        case Engine::State::Failed: break;
    }
    json j = error_body({ErrorCode::ModelUnavailable, "the model could not be loaded: " + s.engine.load_error()});
    j["status"] = "failed";
    return json_response(503, j);
}

HttpResponse metrics(const HttpRequest&, Services& s) {
    std::ostringstream g;
    g << "# HELP fetalhc_model_ready 1 when the model is loaded.\n# TYPE fetalhc_model_ready gauge\nfetalhc_model_ready "
      << (s.engine.ready() ? 1 : 0) << "\n"
      << slot_metrics_text(s.engine.slots().snapshot());
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = s.metrics.text(g.str());
    return r;
}

HttpResponse growth_curve(const HttpRequest&, Services&) {
    json ga = json::array(), p3 = json::array(), p50 = json::array(), p97 = json::array();
    for (int k = 0; k <= 52; ++k) {
        const double w = 14.0 + 0.5 * k;
        ga.push_back(w);
        p3.push_back(intergrowth_hc_at_centile(w, 3));
        p50.push_back(intergrowth_hc_at_centile(w, 50));
        p97.push_back(intergrowth_hc_at_centile(w, 97));
    }
    return json_response(200, {{"ga_weeks", ga},
                               {"p3", p3},
                               {"p50", p50},
                               {"p97", p97},
                               {"source", "INTERGROWTH-21st HC standard (Papageorghiou 2014)"}});
}

}  // namespace

std::vector<Route> site_routes() {
    return {{"GET", "/", index_page},
            {"GET", "/static/{file*}", static_file},
            {"GET", "/openapi.json", openapi},
            {"GET", "/health", health},
            {"GET", "/metrics", metrics},
            {"GET", "/v1/growth-curve", growth_curve},
            {"GET", "/v1/me", me}};
}

}  // namespace fetalhc::server

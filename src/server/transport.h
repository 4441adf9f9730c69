// The HTTP transport as the rest of the server sees it (the "server-http" part). transport.cpp is
// the only file that includes cpp-httplib: it owns the listening socket, the connection threads,
// the slow-client limits, the body framing and size limit, the origin policy, the bearer token,
// the request log and the request metrics; it turns each request into an HttpRequest, lets
// routes::handle answer it, and writes the HttpResponse back. server.cpp wires it to the rest.
//
//   auto http = HttpTransport::bind(options, token, services);   // binds the port
//   if (!http) fail(http.error());
//   std::thread t([&] { (*http)->listen(); });                    // serves until stop()
//   ...; (*http)->stop(/*listen_begun=*/true); t.join();
//
// Thread safety: listen() on one thread, stop() from another; port() from any.
#pragma once

#include "fetalhc/expected.h"
#include "fetalhc/server.h"

#include <memory>
#include <string>

namespace fetalhc::server {

struct Services;  // routes.h

class HttpTransport {
public:
    // Binds options.host:options.port (0: any free port) and raises the listen backlog. Uses the
    // options' connection threads, request and header timeouts, connections per client, upload
    // limit, request log switch and allowed origins. token: the service token the routes that need
    // one take ("" = none; users of the store have their own, auth.h); proxy_secret: the trusted
    // proxy's shared secret (--trusted-proxy-secret; "" = no proxy sign-in). `services` (whose
    // metrics the transport feeds) must outlive it.
    static Expected<std::unique_ptr<HttpTransport>> bind(const ServerOptions& options, const std::string& token,
                                                          const std::string& proxy_secret, Services& services);
    ~HttpTransport();
    HttpTransport(const HttpTransport&) = delete;
    HttpTransport& operator=(const HttpTransport&) = delete;

    int port() const;
    // Serves on this thread until stop().
    void listen();
    // Stops serving. listen_begun: listen() has been called, or is about to be on another thread;
    // stop then first waits until its accept loop runs (or has ended), since only a running loop
    // can be stopped.
    void stop(bool listen_begun);

    struct Impl;

private:
    explicit HttpTransport(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace fetalhc::server

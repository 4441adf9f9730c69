// DICOMweb STOW-RS client (dicomweb_client.h), on cpp-httplib's client.
#include "dicomweb_client.h"

#include <httplib.h>

#include <cctype>
#include <random>

namespace fetalhc::server {
namespace {

// A boundary that no DICOM file is likely to hold (RFC 2046 5.1.1: at most 70 characters).
std::string new_boundary() {
    std::random_device rd;
    std::mt19937_64 g((uint64_t(rd()) << 32) ^ rd());
    static const char hex[] = "0123456789abcdef";
    std::string b = "fetalhc-stow-";
    for (int i = 0; i < 32; ++i) b += hex[g() % 16];
    return b;
}

constexpr size_t kMaxAnswerBytes = 1u << 20;  // a STOW-RS answer lists the instances sent: a few KB

// What an answer says, for a message: printable ASCII only, at most `max` characters.
std::string excerpt(const std::string& body, size_t max = 200) {
    std::string out;
    for (char c : body) {
        if (out.size() >= max) break;
        out += std::isprint(static_cast<unsigned char>(c)) ? c : ' ';
    }
    return out;
}

}  // namespace

Expected<DicomwebTarget> parse_dicomweb_target(const std::string& url) {
    auto bad = [&](const std::string& why) {
        return make_error(ErrorKind::InvalidArgument, "--dicomweb-forward '" + url + "': " + why +
                                                          "; write http[s]://HOST[:PORT]/PATH of the archive's DICOMweb root, "
                                                          "e.g. http://10.0.0.5:8042/dicom-web");
    };
    std::string scheme;
    if (url.rfind("http://", 0) == 0) scheme = "http";
    else if (url.rfind("https://", 0) == 0) scheme = "https";
    else return bad("not an http:// or https:// URL");
    const std::string rest = url.substr(scheme.size() + 3);
    const size_t slash = rest.find('/');
    const std::string authority = rest.substr(0, slash);
    std::string path = slash == std::string::npos ? std::string() : rest.substr(slash);
    if (authority.empty()) return bad("no host");
    if (authority.find('@') != std::string::npos) return bad("a user in the URL is not supported");
    if (path.find_first_of("?#") != std::string::npos) return bad("no query or fragment");
    for (char c : url)
        if (!std::isprint(static_cast<unsigned char>(c)) || c == ' ') return bad("spaces or control characters");
    // The port, when given: digits after the last ':' outside an IPv6 literal.
    const size_t close = authority.rfind(']');
    const size_t colon = authority.rfind(':');
    if (colon != std::string::npos && (close == std::string::npos || colon > close)) {
        const std::string port = authority.substr(colon + 1);
        if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
            std::stoi(port) < 1 || std::stoi(port) > 65535)
            return bad("the port must be 1..65535");
    }
    while (!path.empty() && path.back() == '/') path.pop_back();
    return DicomwebTarget{scheme + "://" + authority, path, url};
}

std::string stow_rs(const DicomwebTarget& target, const std::vector<std::string>& objects, double timeout_s) {
    const std::string boundary = new_boundary();
    std::string body;
    for (const std::string& o : objects) {
        body += "--" + boundary + "\r\nContent-Type: application/dicom\r\n\r\n";
        body += o;
        body += "\r\n";
    }
    body += "--" + boundary + "--\r\n";
    httplib::Client client(target.origin);
    const time_t secs = std::max<time_t>(1, time_t(timeout_s));
    client.set_connection_timeout(secs, 0);
    client.set_read_timeout(secs, 0);
    client.set_write_timeout(secs, 0);
    const std::string url = target.path + "/studies";
    httplib::Request req;
    req.method = "POST";
    req.path = url;
    req.headers = {{"Accept", "application/dicom+json"},
                   {"Content-Type", "multipart/related; type=\"application/dicom\"; boundary=" + boundary}};
    req.body = std::move(body);
    // The answer is read within a budget: only an excerpt is ever shown, and an archive that sends
    // more than kMaxAnswerBytes is cut off (the forward then fails and is retried).
    std::string answer;
    bool too_large = false;
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        if (answer.size() + n > kMaxAnswerBytes) return !(too_large = true);
        answer.append(data, n);
        return true;
    };
    auto res = client.send(req);
    const std::string to = target.origin + url;
    if (too_large) return "failed: " + to + " answered more than " + std::to_string(kMaxAnswerBytes) + " bytes";
    if (!res) return "failed: cannot POST to " + to + ": " + httplib::to_string(res.error());
    res->body = std::move(answer);
    if (res->status == 200) return "sent";
    if (res->status == 202)
        return "failed: " + to + " stored only some instances (202): " + excerpt(res->body);
    return "failed: " + to + " answered " + std::to_string(res->status) + (res->body.empty() ? "" : ": " + excerpt(res->body));
}

}  // namespace fetalhc::server

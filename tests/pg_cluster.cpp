#include "pg_cluster.h"

#include <pqxx/pqxx>

#include <fcntl.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace fetalhc::test {
namespace {

// The newest PostgreSQL server binaries: $FETALHC_PG_BINDIR, else /usr/lib/postgresql/<version>/bin.
std::string find_bindir() {
    const auto usable = [](const fs::path& d) {
        return ::access((d / "initdb").c_str(), X_OK) == 0 && ::access((d / "pg_ctl").c_str(), X_OK) == 0;
    };
    if (const char* env = std::getenv("FETALHC_PG_BINDIR"); env && *env) return usable(env) ? env : "";
    std::error_code ec;
    int best = -1;
    std::string found;
    for (fs::directory_iterator it("/usr/lib/postgresql", ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const int version = std::atoi(name.c_str());
        if (version > best && usable(it->path() / "bin")) {
            best = version;
            found = (it->path() / "bin").string();
        }
    }
    return found;
}

std::string tail_of(const fs::path& log) {
    std::ifstream in(log);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return all.size() > 1500 ? all.substr(all.size() - 1500) : all;
}

int run_shell(const std::string& command) {
    const int rc = std::system(command.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The watcher: a process of its own session that waits until the test process has closed its end
// of a pipe (by exiting, however it ends), then stops the server and removes the folder.
int g_watch_fd = -1;
pid_t g_watcher = -1;

void end_cluster_at_exit() {
    if (g_watch_fd >= 0) ::close(g_watch_fd);
    if (g_watcher > 0) ::waitpid(g_watcher, nullptr, 0);
}

bool start_watcher(const std::string& cleanup, std::string* why) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        *why = std::string("pipe: ") + std::strerror(errno);
        return false;
    }
    const std::string script = "cat >/dev/null; " + cleanup;
    const pid_t pid = ::fork();
    if (pid < 0) {
        *why = std::string("fork: ") + std::strerror(errno);
        return false;
    }
    if (pid == 0) {
        ::setsid();  // not stopped by a Ctrl-C meant for the tests
        ::dup2(fds[0], 0);
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        ::dup2(null, 2);
        ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(fds[0]);
    g_watch_fd = fds[1];
    g_watcher = pid;
    std::atexit(end_cluster_at_exit);
    return true;
}

// Starts the cluster in a new folder; the folder, or "" with *why set.
std::string start_cluster(std::string* why) {
    const std::string bin = find_bindir();
    if (bin.empty()) {
        *why = "PostgreSQL server binaries not found (no initdb/pg_ctl in $FETALHC_PG_BINDIR or /usr/lib/postgresql/*/bin): "
               "the PostgreSQL half of the store tests is skipped; apt-get install postgresql to run it";
        return "";
    }
    std::string as_owner;  // initdb and pg_ctl refuse root: run them as Debian's postgres user
    const struct passwd* pg = nullptr;
    if (::geteuid() == 0) {
        pg = ::getpwnam("postgres");
        if (!pg || run_shell("command -v runuser >/dev/null 2>&1") != 0) {
            *why = "running as root, but there is no `postgres` system user or no runuser to run initdb as (apt-get install "
                   "postgresql creates the user): the PostgreSQL half of the store tests is skipped";
            return "";
        }
        as_owner = "runuser -u postgres -- ";
    }
    std::string dir = (fs::temp_directory_path() / "fetalhc-pg-XXXXXX").string();
    if (!::mkdtemp(dir.data())) {
        *why = std::string("cannot create a folder for the test cluster: ") + std::strerror(errno);
        return "";
    }
    if (pg && ::chown(dir.c_str(), pg->pw_uid, pg->pw_gid) != 0) {
        *why = "cannot hand " + dir + " to the postgres user: " + std::strerror(errno);
        fs::remove_all(dir);
        return "";
    }
    const std::string pg_ctl = as_owner + bin + "/pg_ctl -D " + dir + "/data";
    if (!start_watcher(pg_ctl + " -m immediate -w stop; rm -rf " + dir, why)) return "";
    if (run_shell(as_owner + bin + "/initdb -D " + dir + "/data -U fetalhc --auth=trust -N -E UTF8 --locale=C </dev/null >" + dir +
                  "/initdb.log 2>&1") != 0) {
        *why = "initdb failed (" + bin + "): " + tail_of(dir + "/initdb.log");
        return "";
    }
    const std::string options = "-k " + dir + " -c listen_addresses='' -c fsync=off -c full_page_writes=off -c synchronous_commit=off";
    if (run_shell(pg_ctl + " -l " + dir + "/server.log -w -t 60 -o \"" + options + "\" start </dev/null >" + dir +
                  "/pg_ctl.log 2>&1") != 0) {
        *why = "pg_ctl start failed: " + tail_of(dir + "/pg_ctl.log") + tail_of(dir + "/server.log");
        return "";
    }
    return dir;
}

}  // namespace

PgCluster* PgCluster::get(std::string* why) {
    static std::mutex mu;
    static PgCluster* cluster = nullptr;
    static std::string failure;
    std::lock_guard<std::mutex> lock(mu);
    if (!cluster && failure.empty()) {
        const std::string dir = start_cluster(&failure);
        if (!dir.empty()) {
            cluster = new PgCluster();
            cluster->dir_ = dir;
        }
    }
    if (!cluster) *why = failure;
    return cluster;
}

std::string PgCluster::uri_of(const std::string& database) const {
    return "postgresql:///" + database + "?host=" + dir_ + "&user=fetalhc";
}

std::string PgCluster::exec(const std::string& uri, const std::string& sql) {
    try {
        pqxx::connection c(uri);
        pqxx::nontransaction w(c);
        w.exec(sql);
        return "";
    } catch (const std::exception& e) {
        return e.what();
    }
}

std::string PgCluster::query_value(const std::string& uri, const std::string& sql) {
    try {
        pqxx::connection c(uri);
        pqxx::nontransaction w(c);
        const auto r = w.exec(sql);
        return r.empty() || r[0][0].is_null() ? "" : r[0][0].c_str();
    } catch (const std::exception&) {
        return "";
    }
}

std::string PgCluster::create_database(std::string* error) {
    static std::mutex mu;
    std::string name;
    {
        std::lock_guard<std::mutex> lock(mu);
        name = "t" + std::to_string(::getpid()) + "_" + std::to_string(++next_db_);
    }
    const std::string e = exec(uri_of("postgres"), "CREATE DATABASE " + name);
    if (!e.empty()) {
        *error = "CREATE DATABASE " + name + ": " + e;
        return "";
    }
    return uri_of(name);
}

void PgCluster::drop_database(const std::string& uri) {
    const size_t start = std::string("postgresql:///").size();
    const std::string name = uri.substr(start, uri.find('?') - start);
    exec(uri_of("postgres"), "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
}

}  // namespace fetalhc::test

// A throw-away PostgreSQL server for the tests of one test process (tests/test_store.cpp).
//
//   std::string why;
//   PgCluster* pg = PgCluster::get(&why);          // started on first use, shared by the process's tests
//   if (!pg) GTEST_SKIP() << why;                  // e.g. the PostgreSQL server binaries are not installed
//   std::string uri = pg->create_database(&why);   // a new empty database: postgresql:///t_1?host=...
//   ...; pg->drop_database(uri);
//
// initdb makes a cluster in a new folder under the temporary folder (superuser "fetalhc", trust
// authentication), and pg_ctl starts it listening only on a unix socket inside that folder (no TCP
// port, so parallel test processes never collide). initdb and pg_ctl refuse to run as root: when the
// tests run as root (CI), the folder is handed to the `postgres` system user that Debian's package
// creates and both run as that user (runuser). The binaries are found in $FETALHC_PG_BINDIR, else
// the newest /usr/lib/postgresql/<version>/bin. Durability is off (fsync=off): the data is thrown
// away.
// The server is stopped and its folder removed when the test process exits, even when it crashes
// or is killed: a watcher process started beside it waits for the end of a pipe that only the test
// process holds open.
#pragma once

#include <string>

namespace fetalhc::test {

class PgCluster {
public:
    // The process's cluster (started on the first call), or nullptr with *why saying why not.
    static PgCluster* get(std::string* why);

    // Creates an empty database; its connection URI, or "" with *error set.
    std::string create_database(std::string* error);
    // Drops a database made by create_database (connections to it are ended first).
    void drop_database(const std::string& uri);
    // Runs SQL in the database of `uri` (autocommit); "" or the error.
    std::string exec(const std::string& uri, const std::string& sql);
    // Runs a query returning one value (as text; "" for none or on error).
    std::string query_value(const std::string& uri, const std::string& sql);

    std::string uri_of(const std::string& database) const;

private:
    PgCluster() = default;
    std::string dir_;
    int next_db_ = 0;
};

}  // namespace fetalhc::test

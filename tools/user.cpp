// `fetalhc user add|list|revoke|rotate`: the users of the HTTP API and their roles, in the store
// `serve --db` uses (SQLite file or PostgreSQL URI). A new token is printed once, alone on the last
// line of stdout; the store keeps only its SHA-256. `fetalhc audit export`: the audit trail.
#include "cli.h"

#include "fetalhc/store.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace fetalhc_cli {
namespace {

struct UserArgs {
    std::string db = "fetalhc.db";
    std::string name;
    std::string role;
    bool json = false;
};

std::unique_ptr<fetalhc::Store> open_store(const std::string& db) {
    auto s = fetalhc::Store::open(db);
    if (!s) {
        fail(s.error_value());
        return nullptr;
    }
    return std::move(*s);
}

void add_db_option(CLI::App* cmd, std::string& db) {
    cmd->add_option("--db", db, "the store serve --db uses (SQLite file or postgresql:// URI)")->capture_default_str();
}

int print_token(const fetalhc::Expected<std::string>& token, const std::string& what) {
    if (!token) return fail(token.error_value());
    std::printf("%s; its token (shown once: give it to the user, it cannot be read back):\n%s\n", what.c_str(), token->c_str());
    return kExitOk;
}

int run_user_add(const UserArgs& a) {
    const auto role = fetalhc::parse_role(a.role);
    if (!role) {
        error("--role must be viewer, sonographer or admin (got '" + a.role + "')");
        return kExitUsage;
    }
    auto store = open_store(a.db);
    if (!store) return kExitUsage;
    return print_token(store->add_user(a.name, *role), "user '" + a.name + "' added as " + a.role);
}

int run_user_rotate(const UserArgs& a) {
    auto store = open_store(a.db);
    if (!store) return kExitUsage;
    return print_token(store->rotate_user_token(a.name), "user '" + a.name + "' has a new token (the old one no longer works)");
}

int run_user_revoke(const UserArgs& a) {
    auto store = open_store(a.db);
    if (!store) return kExitUsage;
    auto u = store->revoke_user(a.name);
    if (!u) return fail(u.error_value());
    std::printf("user '%s' revoked at %s: its token is refused from the next request on\n", u->name.c_str(), u->revoked_at->c_str());
    return kExitOk;
}

int run_user_list(const UserArgs& a) {
    auto store = open_store(a.db);
    if (!store) return kExitUsage;
    auto users = store->users();
    if (!users) return fail(users.error_value());
    if (a.json) {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& u : *users)
            j.push_back({{"name", u.name}, {"role", fetalhc::role_name(u.role)}, {"created_at", u.created_at},
                         {"last_used_at", u.last_used_at ? nlohmann::json(*u.last_used_at) : nlohmann::json(nullptr)},
                         {"revoked_at", u.revoked_at ? nlohmann::json(*u.revoked_at) : nlohmann::json(nullptr)}});
        std::printf("%s\n", j.dump(2).c_str());
        return kExitOk;
    }
    std::printf("%-24s %-12s %-21s %-21s %s\n", "name", "role", "created", "last used", "revoked");
    for (const auto& u : *users)
        std::printf("%-24s %-12s %-21s %-21s %s\n", u.name.c_str(), fetalhc::role_name(u.role), u.created_at.c_str(),
                    u.last_used_at.value_or("-").c_str(), u.revoked_at.value_or("-").c_str());
    return kExitOk;
}

struct AuditArgs {
    std::string db = "fetalhc.db";
    fetalhc::AuditQuery query;
    std::string format = "csv";
};

// Every entry matching the query, newest first, page by page.
int run_audit_export(AuditArgs a) {
    for (const auto* t : {&a.query.since, &a.query.until})
        if (!t->empty() && !fetalhc::valid_audit_time(*t)) {
            error("--since and --until take a date (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ), not '" + *t + "'");
            return kExitUsage;
        }
    auto store = open_store(a.db);
    if (!store) return kExitUsage;
    std::vector<fetalhc::AuditEntry> all;
    a.query.limit = 1000;
    for (;;) {
        auto page = store->audit_entries(a.query);
        if (!page) return fail(page.error_value());
        all.insert(all.end(), page->begin(), page->end());
        if (int(page->size()) < a.query.limit) break;
        a.query.before_id = page->back().id;
    }
    if (a.format == "json") {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& e : all) j.push_back(fetalhc::audit_json(e));
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        std::fputs(fetalhc::audit_csv(all).c_str(), stdout);
    }
    return kExitOk;
}

}  // namespace

void add_user_command(CLI::App& app, Commands& commands) {
    auto* user = app.add_subcommand("user", "users of the HTTP API: each signs in with a token of their own and has a role "
                                            "(viewer, sonographer, admin)");
    user->require_subcommand(1);
    auto add_db = [](CLI::App* cmd, UserArgs& a) { add_db_option(cmd, a.db); };
    auto add = std::make_shared<UserArgs>();
    auto* add_cmd = user->add_subcommand("add", "add a user and print its token (once, on the last line)");
    add_cmd->add_option("name", add->name, "the user's name: 1 to 64 letters, digits, '_', '.', '@' or '-'")->required();
    add_cmd->add_option("--role", add->role, "viewer (reads), sonographer (also measures, saves, exports) or admin (also manages)")
        ->required();
    add_db(add_cmd, *add);
    commands.push_back({add_cmd, [add] { return run_user_add(*add); }});
    auto list = std::make_shared<UserArgs>();
    auto* list_cmd = user->add_subcommand("list", "the users: name, role, created, last used, revoked (never a token)");
    list_cmd->add_flag("--json", list->json, "JSON array on stdout");
    add_db(list_cmd, *list);
    commands.push_back({list_cmd, [list] { return run_user_list(*list); }});
    auto revoke = std::make_shared<UserArgs>();
    auto* revoke_cmd = user->add_subcommand("revoke", "revoke a user: its token is refused from the next request on (no restart)");
    revoke_cmd->add_option("name", revoke->name, "the user")->required();
    add_db(revoke_cmd, *revoke);
    commands.push_back({revoke_cmd, [revoke] { return run_user_revoke(*revoke); }});
    auto rotate = std::make_shared<UserArgs>();
    auto* rotate_cmd = user->add_subcommand("rotate", "give a user a new token (printed once); the old one stops working");
    rotate_cmd->add_option("name", rotate->name, "the user")->required();
    add_db(rotate_cmd, *rotate);
    commands.push_back({rotate_cmd, [rotate] { return run_user_rotate(*rotate); }});

    auto* audit = app.add_subcommand("audit", "the audit trail: who read or wrote which patient data, and who was refused");
    audit->require_subcommand(1);
    auto ex = std::make_shared<AuditArgs>();
    auto* export_cmd = audit->add_subcommand("export", "the entries (newest first) as CSV or JSON, for offline review");
    add_db_option(export_cmd, ex->db);
    export_cmd->add_option("--since", ex->query.since, "from this UTC date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)");
    export_cmd->add_option("--until", ex->query.until, "up to this UTC date (the whole day) or time");
    export_cmd->add_option("--user", ex->query.user, "one user's entries");
    export_cmd->add_option("--pregnancy-id", ex->query.pregnancy_id, "one pregnancy's entries");
    export_cmd->add_option("--format", ex->format, "csv or json")->check(CLI::IsMember({"csv", "json"}))->capture_default_str();
    commands.push_back({export_cmd, [ex] { return run_audit_export(*ex); }});
}

}  // namespace fetalhc_cli

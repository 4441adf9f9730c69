// Test helper: runs a check in a child process with a time limit, so that a regression which
// blocks (opening a named pipe) or reads without end (/dev/zero) fails its test instead of hanging
// it or exhausting the machine.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

// Runs `fn` in a child killed after `seconds`; returns what it returned, or why it did not finish.
inline std::string in_child(const std::function<std::string()>& fn, unsigned seconds = 10) {
    int fds[2];
    if (::pipe(fds) != 0) return "test setup: pipe() failed";
    const pid_t pid = ::fork();
    if (pid < 0) return "test setup: fork() failed";
    if (pid == 0) {
        ::close(fds[0]);
        ::alarm(seconds);
        const std::string out = fn();
        if (::write(fds[1], out.data(), out.size()) < 0) {}
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        return "the child was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + std::to_string(seconds) +
               " s passed?)";
    return out;
}

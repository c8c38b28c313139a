import type { Problem } from '../../proto/index.ts';

/** A failure the CLI reports as one message on stderr before it exits non-zero. */
export class CliError extends Error {
  readonly exitCode: number;

  constructor(message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'CliError';
    this.exitCode = options.exitCode ?? 1;
  }
}

/** An error response of the coordinator, with its problem+json body when it sent one. */
export class ProblemError extends CliError {
  readonly status: number;
  readonly problem: Partial<Problem>;

  constructor(request: string, status: number, problem: Partial<Problem>) {
    super(describeProblem(request, status, problem));
    this.name = 'ProblemError';
    this.status = status;
    this.problem = problem;
  }
}

function describeProblem(request: string, status: number, problem: Partial<Problem>): string {
  const title = problem.title ?? 'error response';
  const lines = [`${request} failed with ${status} ${title}`];
  if (problem.detail) lines[0] += `: ${problem.detail}`;
  for (const issue of problem.issues ?? []) {
    const field = issue.path === '' ? '(body)' : issue.path;
    lines.push(`  ${field}: ${issue.message}`);
  }
  if (problem.request_id) lines.push(`  request id: ${problem.request_id}`);
  return lines.join('\n');
}

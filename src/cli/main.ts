import { createProgram, reportError } from './program.ts';

// Entry point of `bin/appproxy`. stdout and stderr are written synchronously to files and
// pipes on Linux, so exiting right after the command loses no output.
try {
  await createProgram().parseAsync(process.argv);
  process.exit(0);
} catch (error) {
  process.exit(reportError(error));
}
